"""When a run stops: the 2018 early-stopping rule, and divergence."""

import dataclasses
import math

from engine.errors import RunError


def check_finite(name, value, epoch):
  """Stops the run the moment a logged loss is NaN or inf, naming it."""
  if not math.isfinite(value):
    raise RunError(f'{name} became {value} at epoch {epoch}: training diverged; lower --lr/'
                   '--factor_lr or check the data for extreme values')
  return value


def divergence(train_loss, valid_loss, epoch, config):
  """None while both losses are finite, else one line saying what diverged and what to lower."""
  bad = [f'{name} loss became {value}' for name, value in (('train', train_loss),
                                                           ('valid', valid_loss))
         if not math.isfinite(value)]
  if not bad:
    return None
  return (f'training diverged at epoch {epoch} ({", ".join(bad)}): lower --lr (now {config.lr:g})'
          f' or --factor_lr (now {config.factor_lr:g}), or check the data for extreme values')


@dataclasses.dataclass
class EarlyStopping:
  """The 2018 rule: stop after `patience` epochs in a row without a lower valid loss."""
  patience: int
  best_valid_loss: float = math.inf
  best_epoch: int = 0
  bad_epochs: int = 0

  def update(self, epoch, valid_loss):
    """Records one epoch's valid loss; True when it is a new best."""
    if valid_loss < self.best_valid_loss:
      self.best_valid_loss, self.best_epoch, self.bad_epochs = valid_loss, epoch, 0
      return True
    self.bad_epochs += 1
    return False

  @property
  def should_stop(self):
    return self.bad_epochs >= self.patience

  def state(self):
    return dataclasses.asdict(self)

"""TensorBoard event files beside metrics.jsonl, which stays the record.

The engine reports each saved epoch's scalars and, at the end, the run's
hyperparameters with its results through a `Tracker`; the one that writes event
files uses tensorboardX (the optional `tensorboard` extra; TensorBoard itself
is only needed to look at them). Without tensorboardX a run writes none and
says so once. tensorboardX writes from a queue on a thread, so a killed process
can lose its last events: a resumed run therefore hides every earlier event
(purge from step 1) and writes the saved epochs again from metrics.jsonl, so
the curves hold each epoch once, whatever the kill cut short.
"""

import os
import time
from typing import Optional, Protocol, Sequence

from absl import logging

from iemocap import metrics

INSTALL = ('install the tensorboard extra (python3 run.py installs it; or pip install -e '
           '".[tensorboard]")')


class Tracker(Protocol):
  """Where a run's scalars go besides metrics.jsonl."""

  def epoch(self, epoch: int, scalars: dict) -> None:
    """Scalars {tag: value} of a saved epoch (the step)."""

  def finish(self, hparams: dict, results: dict) -> None:
    """The run's hyperparameters, once, with its final figures."""

  def close(self) -> None:
    ...


class NoTracker:
  """Writes nothing (tensorboardX is not installed)."""

  def epoch(self, epoch, scalars):
    pass

  def finish(self, hparams, results):
    pass

  def close(self):
    pass


class TensorBoard:
  """tensorboardX event files in `logdir`; steps are epochs. `replay`: the saved epochs of a
  resumed run, [(epoch, scalars)], written again after hiding everything written before.

  The event file is created with the first event, after the run's first outputs: a run that
  fails before its first epoch leaves its workdir as empty as it found it. tensorboardX names
  it by the second and opens it with 'wb', so a second writer in the same second (a
  population's result after its last epoch, a quick resume) would erase the first: the name
  also carries the nanoseconds, which keeps every file and keeps name order time order."""

  def __init__(self, logdir: str, replay: Sequence = ()):
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.logdir, self.replay, self.make = logdir, list(replay), SummaryWriter
    self._writer = None

  @property
  def writer(self):
    if self._writer is None:
      self._writer = self.make(logdir=self.logdir, purge_step=1 if self.replay else None,
                               filename_suffix=f'.{time.time_ns() % 10**9:09d}')
      for epoch, scalars in self.replay:
        _add(self._writer, epoch, scalars)
    return self._writer

  def epoch(self, epoch, scalars):
    _add(self.writer, epoch, scalars)
    self.writer.flush()

  def finish(self, hparams, results):
    from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=import-outside-toplevel
    metrics = {f'result/{k}': float(v) for k, v in results.items() if v is not None}
    values = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
    for summary in hparams_summary(values, metrics):
      self.writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
      self.writer.add_scalar(tag, value)
    self.writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


def _add(writer, epoch, scalars):
  for tag, value in scalars.items():
    writer.add_scalar(tag, value, epoch)


def open_tracker(logdir: str, replay: Sequence = ()) -> Tracker:
  """A TensorBoard tracker in `logdir` when tensorboardX is installed, else NoTracker."""
  try:
    return TensorBoard(logdir, replay)
  except ImportError:
    logging.info('no TensorBoard event files: tensorboardX is not installed (%s)', INSTALL)
    return NoTracker()


def result_figures(record: dict) -> dict:
  """The figures of results.json a run's hyperparameters are compared on."""
  figures = metrics.FIGURES[record.get('task', 'classification')]
  keys = figures + ('test_loss', 'best_valid_loss', 'best_epoch') + tuple(
      f'{k}_{s}' for k in figures for s in ('mean', 'std'))
  return {k: record[k] for k in keys if record.get(k) is not None}


def group_logdir(workdir: str, group: int, groups: int) -> str:
  """A population's event directory: the workdir, or one per shape group when there are
  several (each group counts its epochs from 1, and a resume purges by step)."""
  return workdir if groups == 1 else os.path.join(workdir, f'tensorboard-group{group}')


def run_scalars(row: dict, config) -> dict:
  """An epoch of a single run (a metrics.jsonl row)."""
  return {'loss/train': row['train_loss'], 'loss/valid': row['valid_loss'],
          'loss/best_valid': row['best_valid_loss'], 'lr': config.lr,
          'factor_lr': config.factor_lr}


def population_replay(history: dict, members: Sequence[int], rates: dict) -> list:
  """[(epoch, scalars)] of a population's saved epochs for `members` (metrics.jsonl's rows)."""
  best, out = {}, []
  for epoch, row in sorted(history.items()):
    valid = {m: v for m, v in row['valid_loss'].items() if m in members}
    for m, v in valid.items():
      best[m] = min(best.get(m, v), v)
    out.append((epoch, population_scalars(
        {m: v for m, v in row['train_loss'].items() if m in members}, valid, dict(best), rates)))
  return out


def population_scalars(train_losses: dict, valid_losses: dict, best: dict,
                       rates: Optional[dict] = None) -> dict:
  """An epoch of a population: every trained member's losses, the valid loss's mean and spread
  over them, the lowest best valid loss, and learning rates ({tag: value})."""
  scalars = {}
  for member, loss in train_losses.items():
    scalars[f'loss/train/member{member}'] = loss
  for member, loss in valid_losses.items():
    scalars[f'loss/valid/member{member}'] = loss
  if valid_losses:
    values = list(valid_losses.values())
    mean = sum(values) / len(values)
    scalars['loss/valid/mean'] = mean
    scalars['loss/valid/std'] = (sum((v - mean) ** 2 for v in values)
                                 / max(len(values) - 1, 1)) ** 0.5
  finite = [v for v in best.values() if v is not None]
  if finite:
    scalars['loss/best_valid/min'] = min(finite)
  scalars.update(rates or {})
  return scalars

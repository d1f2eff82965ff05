"""The 2018 training protocol for N >= 1 models, written once for both backends.

Each epoch: the seeded shuffle, minibatches, then the whole valid split as one
batch in eval mode; early stopping on valid loss with patience, per model; the
best model kept. At the end each *best* model is evaluated on test (the 2018
code evaluated the last one), beside a baseline (the majority class; for regression
the MAE of the training median). A backend
supplies a `Population` (N models of one shape, side by side); this module owns
the order, the bookkeeping, resuming and every file a run writes.

A single run (`train_and_evaluate`) is the population of one with the 2018
outputs: its checkpoint is written whenever valid loss improves, and a
divergence ends it. Populations (seeds x settings, engine/population.py) run
the same epochs (`run_epochs`); a diverged model stops alone there.
"""

import dataclasses
import os
import statistics
import sys
import time
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
from absl import logging

from engine import early_stopping
from engine import records
from engine import state_dict
from engine import tracking
from engine.errors import Interrupted, NoModel, RunError, StopRequested
from flags.config import Config
from iemocap import metrics
from iemocap.data import Dataset
from iemocap.files import read_json


class Population(Protocol):
  """What a backend provides: N >= 1 models of one shape, trained side by side.

  Every per-model value is an array over the population's models, in order.
  """
  name: str

  def train_epoch(self, epoch: int, active: np.ndarray) -> np.ndarray:
    """Trains the `active` models on epoch `epoch`'s seeded batches (a stopped model's state stays
    as it is); returns each model's summed loss (one host sync)."""

  def evaluate(self, split: str, best: bool) -> tuple[np.ndarray, np.ndarray]:
    """(summed loss (N,), logits (N, n, classes)) on a whole split in eval mode."""

  def keep_best(self, improved: np.ndarray) -> None:
    """Snapshots the models marked `improved` as their best ones."""

  def best_state_dicts(self, indices: Sequence[int]) -> list:
    """The best weights of the models `indices` as 2018 state_dicts ({key: numpy array})."""

  def train_state(self) -> tuple[dict, dict]:
    """(arrays, JSON-able extras): everything needed to resume, best weights included."""

  def load_train_state(self, arrays: dict, progress: dict, path: str) -> None:
    """Puts train_state()'s arrays back (`path` names the file in errors)."""

  def describe_device(self) -> str:
    """A short name of the device(s) the population runs on."""

  @property
  def granule(self) -> int:
    """A program holds its models in multiples of this (one per device; padded)."""


OnEpochEnd = Callable[[int], None]


@dataclasses.dataclass
class MemberProgress:
  """One model's place in the protocol: its early stopping, epochs run, and divergence."""
  stopper: early_stopping.EarlyStopping
  epochs_run: int = 0
  diverged: Optional[str] = None

  @property
  def training(self):
    return self.diverged is None and not self.stopper.should_stop

  @property
  def stopped_by(self):
    return ('diverged' if self.diverged else
            'early_stopping' if self.stopper.should_stop else 'max_epochs')

  def state(self):
    return {'early_stopping': self.stopper.state(), 'epochs_run': self.epochs_run,
            'diverged': self.diverged}

  @classmethod
  def from_state(cls, state):
    return cls(early_stopping.EarlyStopping(**state['early_stopping']), state['epochs_run'],
               state['diverged'])


@dataclasses.dataclass
class EpochResult:
  """What one epoch gave each model of a population (NaN where a model did not train)."""
  train_loss: np.ndarray
  valid_loss: np.ndarray
  improved: np.ndarray
  trained: np.ndarray
  train_s: float
  epoch_s: float


def run_epoch(population: Population, epoch: int, configs: list, progress: list,
              dataset: Dataset) -> EpochResult:
  """Trains and validates one epoch of every training model and updates its progress: a new
  best is kept, a non-finite loss stops that model as diverged."""
  trained = np.array([p.training for p in progress])
  tick = time.perf_counter()
  train_sum = population.train_epoch(epoch, trained)
  train_s = time.perf_counter() - tick
  valid_sum, _ = population.evaluate('valid', best=False)
  epoch_s = time.perf_counter() - tick
  # In the backend's own precision: a vmapped population's sums are float32 arrays, a single
  # run's are float64 (Python floats); results.json records what it always recorded.
  train_loss = dataset.mean_loss(np.asarray(train_sum), 'train')
  valid_loss = dataset.mean_loss(np.asarray(valid_sum), 'valid')
  improved = np.zeros(len(progress), bool)
  for k in np.flatnonzero(trained):
    diverged = early_stopping.divergence(float(train_loss[k]), float(valid_loss[k]), epoch,
                                         configs[k])
    if diverged:
      progress[k].diverged = diverged
      continue
    improved[k] = progress[k].stopper.update(epoch, float(valid_loss[k]))
    progress[k].epochs_run = epoch
  population.keep_best(improved)
  return EpochResult(train_loss, valid_loss, improved, trained, train_s, epoch_s)


def stop_point(on_epoch_end: Optional[OnEpochEnd], epoch: int, workdir: str, close=None):
  """Calls the run's on_epoch_end hook after a saved epoch; a stop request ends the run there."""
  if on_epoch_end is None:
    return
  try:
    on_epoch_end(epoch)
  except StopRequested as stop:
    if close is not None:
      close()
    raise Interrupted(f'stopped by {stop.reason} after epoch {epoch}, which is saved in '
                      f'{workdir}: rerun the same command with --resume to continue',
                      stop.exit_code) from None


def _progress_bar(start_epoch, epochs):
  if not sys.stderr.isatty():
    return None
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=epochs, initial=start_epoch - 1, unit='epoch', dynamic_ncols=True,
              leave=True)


def _samples_per_s(history, n_train):
  """Training throughput over the epochs that did not include compilation."""
  rows = [r for r in history if not r.get('includes_compile')] or history
  seconds = sum(r['train_s'] for r in rows)
  return n_train * len(rows) / seconds if seconds > 0 else 0.0


def save_checkpoint(path: str, arrays: dict, config: Config, backend: str, **metadata) -> None:
  """A 2018 state_dict file with this project's metadata (the backend that wrote it first)."""
  state_dict.save(path, arrays, config, {'backend': backend, **metadata})


def train_and_evaluate(config: Config, backend: Population, dataset: Dataset, is_synthetic: bool,
                       status: str, on_epoch_end: Optional[OnEpochEnd] = None) -> dict:
  """Runs (or resumes) one model's protocol in config.workdir, writes every output; returns
  results.json's record. `backend` is a population of one."""
  workdir = config.workdir
  started = time.perf_counter()
  progress = MemberProgress(early_stopping.EarlyStopping(config.patience))
  history = []
  start_epoch = 1
  earlier_s = 0.0
  if status == 'resume':
    arrays, saved, path = state_dict.read_train_state(workdir)
    backend.load_train_state(arrays, saved, path)
    progress.stopper = early_stopping.EarlyStopping(**saved['early_stopping'])
    history = records.read_metrics(workdir)[:saved['epoch']]
    start_epoch = saved['epoch'] + 1
    progress.epochs_run = saved['epoch']
    earlier_s = sum(r['epoch_s'] for r in history)  # time spent before the interruption
    logging.info('resuming %s after epoch %d (best valid loss %.4f at epoch %d)', workdir,
                 saved['epoch'], progress.stopper.best_valid_loss, progress.stopper.best_epoch)
  tracker = tracking.open_tracker(workdir, [(row['epoch'], tracking.run_scalars(row, config))
                                            for row in history])
  try:
    return _train(config, backend, dataset, is_synthetic, on_epoch_end, progress, history,
                  start_epoch, started, earlier_s, tracker)
  finally:
    tracker.close()


def _train(config, backend, dataset, is_synthetic, on_epoch_end, progress, history, start_epoch,
           started, earlier_s, tracker):
  """train_and_evaluate from `start_epoch` on: the epochs, then the test and the outputs."""
  workdir = config.workdir
  bar = _progress_bar(start_epoch, config.epochs)
  first_in_process = True
  epoch = start_epoch - 1
  while progress.training and epoch < config.epochs:
    epoch += 1
    result = run_epoch(backend, epoch, [config], [progress], dataset)
    if progress.diverged:
      if not progress.stopper.best_epoch:
        raise NoModel(f'no model to test: {progress.diverged}')
      logging.warning('%s; testing the best model so far (epoch %d)', progress.diverged,
                      progress.stopper.best_epoch)
      break
    stopper = progress.stopper
    if result.improved[0]:
      save_checkpoint(os.path.join(workdir, records.CHECKPOINT), backend.best_state_dicts([0])[0],
                      config, backend.name, epoch=epoch)
    train_loss, valid_loss = float(result.train_loss[0]), float(result.valid_loss[0])
    history.append({'epoch': epoch, 'train_loss': train_loss, 'valid_loss': valid_loss,
                    'best_valid_loss': stopper.best_valid_loss,
                    'improved': bool(result.improved[0]), 'train_s': round(result.train_s, 4),
                    'epoch_s': round(result.epoch_s, 4), 'includes_compile': first_in_process})
    first_in_process = False
    records.write_metrics(workdir, history)
    tracker.epoch(epoch, tracking.run_scalars(history[-1], config))
    # The best weights travel with the state: checkpoint.safetensors may be an epoch ahead of
    # the saved progress if the run stopped between the two writes.
    arrays, extras = backend.train_state()
    state_dict.write_train_state(workdir, arrays, {'epoch': epoch,
                                                   'early_stopping': stopper.state(), **extras})
    message = (f'train {train_loss:.4f}  valid {valid_loss:.4f}  best {stopper.best_valid_loss:.4f}'
               f' @{stopper.best_epoch}')
    if bar is not None:
      bar.update(1)
      bar.set_postfix_str(message)
    else:
      logging.info('epoch %d: %s (%.2fs)', epoch, message, result.epoch_s)
    stop_point(on_epoch_end, epoch, workdir, close=bar.close if bar is not None else None)
  if bar is not None:
    bar.close()
  if not history:
    raise RunError(f'{workdir}: no epoch ran; raise --epochs')

  stopper = progress.stopper
  test_sum, logits = backend.evaluate('test', best=True)
  record = {
      'emotion': config.emotion, 'task': dataset.task, 'backend': backend.name,
      'device': backend.describe_device(), **test_record(dataset, logits[0]),
      'test_loss': early_stopping.check_finite(
          'test loss', dataset.mean_loss(float(test_sum[0]), 'test'), epoch),
      'best_valid_loss': stopper.best_valid_loss, 'best_epoch': stopper.best_epoch,
      'epochs_run': len(history), 'stopped_by': progress.stopped_by,
      **metrics.baseline_figures(dataset.task, dataset.train.label, dataset.test.label),
      'seed': config.seed,
      'train_samples_per_s': round(_samples_per_s(history, dataset.train.n), 1),
      'epoch_s': round(statistics.median(r['epoch_s'] for r in history), 4),
      'wall_s': round(earlier_s + time.perf_counter() - started, 3),
      'data': dataset.path, 'synthetic': is_synthetic,
      'n_train': dataset.train.n, 'n_valid': dataset.valid.n, 'n_test': dataset.test.n,
      'workdir': os.path.abspath(workdir),
  }
  if progress.diverged:
    record['diverged'] = progress.diverged
  records.plot_loss_curve(os.path.join(workdir, records.LOSS_CURVE), {'run': history},
                          {'run': stopper.best_epoch},
                          f'{backend.name} LMF, {config.emotion}: loss per epoch',
                          records.LOSS_NAMES[dataset.task])
  tracker.finish(config.hparams(), tracking.result_figures(record))
  records.write_results(workdir, config.to_dict(), record)  # results.json marks it finished
  return record


def test_record(dataset: Dataset, outputs: np.ndarray) -> dict:
  """A model's test figures (metrics.FIGURES of its task, per-target lists for traits)."""
  return metrics.test_figures(dataset.task, dataset.test.label, outputs, dataset.corpus)


def finished_record(config: Config) -> dict:
  """The results of a run that already completed in config.workdir."""
  return read_json(os.path.join(config.workdir, records.RESULTS_JSON))

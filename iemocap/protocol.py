"""The 2018 training protocol, written once for both backends.

Each epoch: the seeded shuffle, minibatches, then the whole valid split as one
batch in eval mode; early stopping on valid loss with patience; the best model
kept (and written as checkpoint.safetensors whenever it improves). At the end
the *best* model is evaluated on test (the 2018 code evaluated the last one),
beside the majority-class baseline. A backend supplies the steps (see
`Backend`); this module owns the order, the bookkeeping and the outputs.
"""

import dataclasses
import os
import statistics
import sys
import time
from typing import Protocol

from absl import logging

from iemocap import batching
from iemocap import metrics
from iemocap import records
from iemocap.errors import DataError, Interrupted, RunError, StopRequested


class Backend(Protocol):
  """What a framework provides to run the protocol."""
  name: str

  def train_epoch(self, batches):
    """Trains on each index array in order; returns the summed loss (one host sync)."""

  def evaluate(self, split, best):
    """(summed loss, logits (N, classes) as numpy) on a whole split, eval mode."""

  def keep_best(self, workdir, epoch):
    """Snapshots the current model as the best one and writes checkpoint.safetensors."""

  def save_progress(self, workdir, progress):
    """Writes train_state.safetensors: everything needed to resume after `progress`."""

  def restore(self, workdir):
    """Loads train_state.safetensors and the best checkpoint; returns the saved progress."""

  def describe_device(self):
    """A short name of the device the run uses."""


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


def train_and_evaluate(config, backend, dataset, is_synthetic, status, on_epoch_end=None):
  """Runs (or resumes) the protocol in config.workdir and writes every output; returns results."""
  workdir = config.workdir
  started = time.perf_counter()
  stopper = records.EarlyStopping(config.patience)
  history = []
  start_epoch = 1
  earlier_s = 0.0
  if status == 'resume':
    progress = backend.restore(workdir)
    stopper = records.EarlyStopping(**progress['early_stopping'])
    history = records.read_metrics(workdir)[:progress['epoch']]
    start_epoch = progress['epoch'] + 1
    earlier_s = sum(r['epoch_s'] for r in history)  # time spent before the interruption
    logging.info('resuming %s after epoch %d (best valid loss %.4f at epoch %d)', workdir,
                 progress['epoch'], stopper.best_valid_loss, stopper.best_epoch)
  n_train, n_valid = dataset.train.n, dataset.valid.n
  bar = _progress_bar(start_epoch, config.epochs)
  first_in_process = True
  epoch = start_epoch - 1
  diverged = None
  while not stopper.should_stop and epoch < config.epochs:
    epoch += 1
    tick = time.perf_counter()
    batches = batching.epoch_batches(n_train, config.batch_size, config.seed, epoch)
    train_sum = backend.train_epoch(batches)
    train_s = time.perf_counter() - tick
    valid_sum, _ = backend.evaluate('valid', best=False)
    epoch_s = time.perf_counter() - tick
    train_loss, valid_loss = train_sum / n_train, valid_sum / n_valid
    diverged = records.divergence(train_loss, valid_loss, epoch, config)
    if diverged:
      if not stopper.best_epoch:
        raise RunError(f'no model to test: {diverged}')
      logging.warning('%s; testing the best model so far (epoch %d)', diverged,
                      stopper.best_epoch)
      break
    improved = stopper.update(epoch, valid_loss)
    if improved:
      backend.keep_best(workdir, epoch)
    history.append({'epoch': epoch, 'train_loss': train_loss, 'valid_loss': valid_loss,
                    'best_valid_loss': stopper.best_valid_loss, 'improved': improved,
                    'train_s': round(train_s, 4), 'epoch_s': round(epoch_s, 4),
                    'includes_compile': first_in_process})
    first_in_process = False
    records.write_metrics(workdir, history)
    backend.save_progress(workdir, {'epoch': epoch, 'early_stopping': stopper.state()})
    message = (f'train {train_loss:.4f}  valid {valid_loss:.4f}  best {stopper.best_valid_loss:.4f}'
               f' @{stopper.best_epoch}')
    if bar is not None:
      bar.update(1)
      bar.set_postfix_str(message)
    else:
      logging.info('epoch %d: %s (%.2fs)', epoch, message, epoch_s)
    if on_epoch_end is not None:
      try:
        on_epoch_end(epoch)
      except StopRequested as stop:
        if bar is not None:
          bar.close()
        raise Interrupted(f'stopped by {stop.reason} after epoch {epoch}, which is saved in '
                          f'{workdir}: rerun the same command with --resume to continue',
                          stop.exit_code) from None
  if bar is not None:
    bar.close()
  if not history:
    raise RunError(f'{workdir}: no epoch ran; raise --epochs')

  test_sum, logits = backend.evaluate('test', best=True)
  test = metrics.classification_metrics(dataset.test.label, logits)
  majority_f1, majority_accuracy = metrics.majority_baseline(dataset.train.label,
                                                             dataset.test.label)
  record = {
      'emotion': config.emotion, 'backend': backend.name, 'device': backend.describe_device(),
      'f1': test['f1'], 'accuracy': test['accuracy'],
      'test_loss': records.check_finite('test loss', test_sum / dataset.test.n, epoch),
      'best_valid_loss': stopper.best_valid_loss, 'best_epoch': stopper.best_epoch,
      'epochs_run': len(history),
      'stopped_by': ('diverged' if diverged else
                     'early_stopping' if stopper.should_stop else 'max_epochs'),
      'majority_f1': majority_f1, 'majority_accuracy': majority_accuracy, 'seed': config.seed,
      'train_samples_per_s': round(_samples_per_s(history, n_train), 1),
      'epoch_s': round(statistics.median(r['epoch_s'] for r in history), 4),
      'wall_s': round(earlier_s + time.perf_counter() - started, 3),
      'data': dataset.path, 'synthetic': is_synthetic,
      'n_train': n_train, 'n_valid': n_valid, 'n_test': dataset.test.n,
      'workdir': os.path.abspath(workdir),
  }
  if diverged:
    record['diverged'] = diverged
  records.plot_loss_curve(os.path.join(workdir, records.LOSS_CURVE), {'run': history},
                          {'run': stopper.best_epoch},
                          f'{backend.name} LMF, {config.emotion}: loss per epoch')
  records.write_results(workdir, config.to_dict(), record)  # results.json marks it finished
  return record


def finished_record(config):
  """The results of a run that already completed in config.workdir."""
  return records.read_json(os.path.join(config.workdir, records.RESULTS_JSON))


def evaluation_data(checkpoint_config, emotion, data_path):
  """(config, dataset, is_synthetic) to evaluate a checkpoint on: by default the data and emotion
  it was trained on; a data path that came from the checkpoint says so when it fails."""
  config = dataclasses.replace(checkpoint_config, emotion=emotion or checkpoint_config.emotion,
                               data_path=data_path or checkpoint_config.data_path)
  try:
    dataset, is_synthetic, data_note = records.open_dataset(config)
  except DataError as e:
    if data_path or not config.data_path:
      raise
    raise DataError(f'{e} (that data path is the one stored in the checkpoint; pass --data_path '
                    'to evaluate on data elsewhere)') from None
  logging.info(data_note)
  return config, dataset, is_synthetic


def evaluation_report(checkpoint_path, dataset, is_synthetic, split, loss_sum, logits, metadata):
  """What `evaluate` prints: F1, accuracy, mean loss and N of one split."""
  labels = dataset.split(split).label
  result = metrics.classification_metrics(labels, logits)
  return {'checkpoint': os.path.abspath(checkpoint_path), 'emotion': dataset.emotion,
          'split': split, 'n': int(labels.shape[0]), 'f1': result['f1'],
          'accuracy': result['accuracy'], 'loss': loss_sum / labels.shape[0],
          'written_by': metadata.get('backend', 'unknown'), 'data': dataset.path,
          'synthetic': is_synthetic}


def format_evaluation(report):
  note = ' (synthetic data)' if report['synthetic'] else ''
  return (f'{report["emotion"]} {report["split"]}{note}: n={report["n"]}  '
          f'weighted F1 {100 * report["f1"]:.2f}  accuracy {100 * report["accuracy"]:.2f}  '
          f'loss {report["loss"]:.4f}  (checkpoint by {report["written_by"]})')

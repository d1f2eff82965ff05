"""The run protocol both backends share: its data, workdir, early stopping and outputs.

Every file is written atomically (iemocap/files.py), so an interrupted run
never leaves a half-written result behind.
"""

import contextlib
import csv
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import socket
import stat

from absl import logging

from iemocap import data as data_lib
from iemocap import synthetic
from iemocap.errors import DataError, RunError
from iemocap.files import atomic_write, read_json, write_json, write_text

RESULTS_JSON = 'results.json'
RESULTS_CSV = 'results.csv'
METRICS_JSONL = 'metrics.jsonl'
LOSS_CURVE = 'loss_curve.png'
CONFIG_JSON = 'config.json'
CHECKPOINT = 'checkpoint.safetensors'
TRAIN_STATE = 'train_state.safetensors'
MEMBERS_DIR = 'members'
LOCK = '.lmf.lock'
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # some NFS, FUSE, Lustre mounts
# Every name a run writes in its workdir: a fresh workdir holding one of them holds someone
# else's file, which a run would replace.
OUTPUTS = (RESULTS_JSON, RESULTS_CSV, METRICS_JSONL, LOSS_CURVE, CONFIG_JSON, CHECKPOINT,
           TRAIN_STATE, MEMBERS_DIR)

# The header the 2018 grid search wrote, in its order and spelling.
CSV_2018_COLUMNS = (
    ('audio_hidden', 'audio_hidden'), ('video_hidden', 'video_hidden'),
    ('text_hidden', 'text_hidden'), ('audio_dropout', 'audio_dropout'),
    ('video_dropout', 'video_dropout'), ('text_dropout', 'text_dropout'),
    ('factor_learning_rate', 'factor_lr'), ('learning_rate', 'lr'), ('rank', 'rank'),
    ('batch_size', 'batch_size'), ('weight_decay', 'weight_decay'),
    ('Best Validation CrossEntropyLoss', 'best_valid_loss'),
    ('Test CrossEntropyLoss', 'test_loss'), ('Test F1-score', 'f1'),
    ('Test Accuracy Score', 'accuracy'))
# What results.json always holds (backends may add more, e.g. the device).
RESULT_KEYS = ('emotion', 'backend', 'f1', 'accuracy', 'test_loss', 'best_valid_loss',
               'best_epoch', 'epochs_run', 'stopped_by', 'majority_f1', 'majority_accuracy',
               'seed', 'train_samples_per_s', 'wall_s', 'data', 'synthetic')


def open_dataset(config):
  """(Dataset, is_synthetic, a log line saying where the data came from); logs how many
  non-finite feature values each split had replaced."""
  dataset, is_synthetic, note = _open_dataset(config)
  for line in dataset.replaced_lines():
    logging.info('non-finite features set to 0: %s', line)
  return dataset, is_synthetic, note


def _open_dataset(config):
  if config.data_path:
    dataset = data_lib.load(config.data_path, config.emotion)
    synthetic_record = synthetic.describe(dataset.path)
    if synthetic_record is None:
      return dataset, False, f'data: {dataset.path} ({config.emotion})'
    return dataset, True, (f'data: {dataset.path} ({config.emotion}), a synthetic set (seed '
                           f'{synthetic_record["seed"]}): its F1 is not the paper\'s F1')
  try:
    path = synthetic.default_path()
  except (OSError, DataError) as e:
    raise DataError(f'cannot write the synthetic data set into its cache directory '
                    f'{synthetic.cache_dir()} ({e}): set LMF_CACHE_DIR to a writable directory, '
                    'or pass --data_path') from None
  dataset = data_lib.load(path, config.emotion)
  return dataset, True, (f'data: no --data_path given, so the synthetic IEMOCAP stand-in at {path} '
                         f'({config.emotion}); its F1 is not the paper\'s F1')


def default_workdir(config, backend, options):
  """runs/<backend>-<emotion>-<fingerprint of the config, backend options and synthetic data>."""
  identity = {'options': options}
  if not config.data_path:
    identity['synthetic_version'] = synthetic.VERSION  # a new stand-in is a new run
  blob = json.dumps(identity, sort_keys=True).encode()
  fingerprint = hashlib.sha256(config.fingerprint().encode() + blob).hexdigest()[:10]
  return os.path.join('runs', f'{backend}-{config.emotion}-{fingerprint}')


def resolve_workdir(config, backend, options):
  """The config with its workdir filled in (the default one when --workdir is empty)."""
  return dataclasses.replace(config, workdir=config.workdir or default_workdir(config, backend,
                                                                                options))


def _saved_run(workdir):
  """config.json of the run in `workdir`, checked to be one this project wrote."""
  path = os.path.join(workdir, CONFIG_JSON)
  try:
    saved = read_json(path)
  except (ValueError, UnicodeDecodeError) as e:
    raise RunError(f'{path} is not valid JSON ({e}): it is damaged or was not written by this '
                   'project; choose another --workdir') from None
  if not (isinstance(saved, dict) and isinstance(saved.get('config'), dict)
          and isinstance(saved.get('backend'), str)):
    raise RunError(f'{path} is not a run configuration written by this project: choose another '
                   '--workdir')
  return saved


def _same_data(saved, mine):
  """Whether two stored data paths name the same data: runs before paths were stored absolute
  hold them as given, relative to where the run started."""
  if saved == mine:
    return True
  if not isinstance(saved, str) or not saved or not mine:
    return False
  if os.path.abspath(saved) == mine:
    return True
  try:
    return os.path.samefile(saved, mine)
  except OSError:
    return False


def _differences(saved, config, backend, options):
  """The names of what differs between a saved run and this one."""
  mine = config.to_dict()
  differences = [k for k in mine if k not in ('workdir', 'data_path')
                 and saved['config'].get(k) != mine[k]]
  if not _same_data(saved['config'].get('data_path'), mine['data_path']):
    differences.append('data_path')
  if saved.get('backend') != backend:
    differences.insert(0, 'backend')
  if saved.get('backend_options', {}) != options:
    differences.append('backend options')
  return differences


def prepare_workdir(config, backend, options, resume):
  """(config with its workdir resolved, status): status is 'new', 'resume' or 'complete'.

  A workdir belongs to one configuration: another one is refused, never
  overwritten. A finished run (results.json, written last) is reported again
  rather than retrained; an interrupted one continues only with --resume; one
  stopped before its first epoch was saved (config.json alone) starts again,
  with this command's configuration. A workdir without config.json that holds
  any file a run writes holds someone else's files: refused, since the run
  would replace them.
  """
  config = resolve_workdir(config, backend, options)
  workdir = config.workdir
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunError(f'workdir {workdir} is a file: choose a directory for --workdir')
  saved_path = os.path.join(workdir, CONFIG_JSON)
  present = [name for name in OUTPUTS if name != CONFIG_JSON
             and os.path.lexists(os.path.join(workdir, name))]
  if os.path.exists(saved_path):
    differences = _differences(_saved_run(workdir), config, backend, options)
    if differences and present:
      raise RunError(f'workdir {workdir} holds a run with another configuration (differs in '
                     f'{", ".join(differences)}): choose another --workdir')
    if not differences and RESULTS_JSON in present:
      return config, 'complete'
    if not differences and TRAIN_STATE in present:
      if not resume:
        raise RunError(f'workdir {workdir} holds an interrupted run: pass --resume to continue '
                       'it, or choose another --workdir')
      return config, 'resume'
  else:
    if resume:
      raise RunError(f'--resume: workdir {workdir} holds no run to continue')
    if present:
      raise RunError(f'workdir {workdir} already holds {", ".join(present)} but no '
                     f'{CONFIG_JSON}: they are not this project\'s and a run would replace them; '
                     'choose another --workdir')
  write_json(saved_path, {'config': config.to_dict(), 'backend': backend,
                          'backend_options': options})
  return config, 'new'


def _open_lock(path, workdir):
  """The locked lock file's descriptor; None where locking cannot work (see workdir_lock)."""
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
      if e.errno == errno.ELOOP:
        raise RunError(f'{path} is a symbolic link, not this project\'s lock file: choose '
                       'another --workdir') from None
      if e.errno in _READ_ONLY and os.path.exists(os.path.join(workdir, RESULTS_JSON)):
        return None  # a finished run on read-only storage: reporting it writes nothing
      raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      os.close(fd)
      raise RunError(f'{path} is not a regular file: choose another --workdir')
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode('utf-8', 'replace').strip() or 'another process'
      os.close(fd)
      raise RunError(f'workdir {workdir} is in use by {holder}: wait for it to finish, stop it, '
                     'or choose another --workdir') from None
    except OSError as e:
      os.close(fd)
      if e.errno not in _NO_LOCKS:
        raise
      logging.warning('%s: this file system cannot lock files (%s): nothing stops a second '
                      'process from using this workdir at the same time', workdir, e.strerror)
      return None
    try:
      current = os.stat(path, follow_symlinks=False)
      locked = os.fstat(fd)
      if (current.st_dev, current.st_ino) == (locked.st_dev, locked.st_ino):
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # its holder removed that file while we opened it: lock the one there now


@contextlib.contextmanager
def workdir_lock(workdir):
  """Holds an exclusive lock on `workdir` for a run: a second process is refused.

  flock belongs to the open file: the kernel releases it when the process ends,
  however it ends, so a killed run never blocks the next one. The lock file
  names its holder for the refusal message. A lock file, and a workdir, that
  this call created are removed again when no config.json stayed behind;
  whoever locks next checks that the file it locked is still the one there.
  On file systems without flock (some NFS, FUSE, Lustre mounts) the run goes
  on unlocked, with a warning; a finished run on read-only storage is
  reported without a lock.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunError(f'workdir {workdir} is a file: choose a directory for --workdir')
  created_dir = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  created_lock = not os.path.lexists(path)
  fd = None
  try:
    fd = _open_lock(path, workdir)
    if fd is not None:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode(), 0)
    yield
  finally:
    if fd is not None:
      os.ftruncate(fd, 0)
      if created_lock and not os.path.exists(os.path.join(workdir, CONFIG_JSON)):
        os.unlink(path)
      os.close(fd)
    if created_dir and os.path.isdir(workdir) and not os.listdir(workdir):
      os.rmdir(workdir)


@contextlib.contextmanager
def claim_workdir(config, backend, options, resume):
  """prepare_workdir under the workdir's lock, held until the run ends: yields (config, status).

  Temporary files of writes cut short by an earlier kill are removed here: no
  other process can be writing them while the lock is held. A new run that
  fails before its first epoch is saved takes its config.json back, so the
  corrected command can use the same workdir.
  """
  config = resolve_workdir(config, backend, options)
  with workdir_lock(config.workdir):
    saved_path = os.path.join(config.workdir, CONFIG_JSON)
    had_config = os.path.exists(saved_path)
    config, status = prepare_workdir(config, backend, options, resume)
    remove_temporary_files(config.workdir)
    try:
      yield config, status
    except BaseException:
      if (status == 'new' and not had_config
          and not any(os.path.lexists(os.path.join(config.workdir, name))
                      for name in OUTPUTS if name != CONFIG_JSON)):
        os.unlink(saved_path)
      raise


def remove_temporary_files(workdir):
  """Deletes the temporary files iemocap.files.atomic_write leaves behind when killed mid-write
  (`.<name>.` and mkstemp's 8 characters), and nothing else."""
  pattern = re.compile(r'\.(.+)\.[a-z0-9_]{8}')
  for directory, names in ((workdir, OUTPUTS), (os.path.join(workdir, MEMBERS_DIR), None)):
    if not os.path.isdir(directory):
      continue
    for entry in os.listdir(directory):
      match = pattern.fullmatch(entry)
      if not match or not os.path.isfile(os.path.join(directory, entry)):
        continue
      if (match.group(1) in names) if names else match.group(1).endswith('.safetensors'):
        os.unlink(os.path.join(directory, entry))


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


def write_metrics(workdir, history):
  """metrics.jsonl, one line per finished epoch (rewritten whole, atomically)."""
  text = ''.join(json.dumps(row, sort_keys=True) + '\n' for row in history)
  write_text(os.path.join(workdir, METRICS_JSONL), text)


def read_metrics(workdir):
  path = os.path.join(workdir, METRICS_JSONL)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except ValueError as e:
        raise RunError(f'{path} line {number} is not valid JSON ({e}): the file is damaged; '
                       'start the run again in another --workdir') from None
  return rows


def csv_row(config, record):
  """The 2018 columns (hyperparameters, losses, F1, accuracy) followed by the other result keys."""
  values = {**config, **record}
  header = [name for name, _ in CSV_2018_COLUMNS]
  row = [values[key] for _, key in CSV_2018_COLUMNS]
  for key in record:
    if key not in {k for _, k in CSV_2018_COLUMNS} and not isinstance(record[key], (dict, list)):
      header.append(key)
      row.append(record[key])
  return header, row


def write_results(workdir, config, record):
  """results.csv, then results.json (one row per model: one here, one per seed in sweeps)."""
  missing = [k for k in RESULT_KEYS if k not in record]
  if missing:
    raise ValueError(f'result record lacks {missing}')
  write_csv(os.path.join(workdir, RESULTS_CSV), [csv_row(config, record)])
  write_json(os.path.join(workdir, RESULTS_JSON), record)  # last: it marks the run finished


def write_csv(path, rows):
  """rows: (header, values) pairs sharing one header."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(rows[0][0])
  for _, values in rows:
    writer.writerow(values)
  write_text(path, out.getvalue())


def plot_loss_curve(path, curves, best_epochs, title):
  """Train and valid loss per epoch with each best epoch marked; curves: {label: history}."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(7, 4.2), dpi=110)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  many = len(curves) > 1
  for index, (label, history) in enumerate(curves.items()):
    color = f'C{index % 10}'
    epochs = [row['epoch'] for row in history]
    prefix = f'{label} ' if many else ''
    axes.plot(epochs, [row['train_loss'] for row in history], color=color, alpha=0.45,
              linestyle='--', label=f'{prefix}train' if not many or index == 0 else None)
    axes.plot(epochs, [row['valid_loss'] for row in history], color=color,
              label=f'{prefix}valid' if not many or index == 0 else None)
    best = best_epochs[label]
    best_rows = [row for row in history if row['epoch'] == best]
    if best_rows:
      axes.plot([best], [best_rows[0]['valid_loss']], marker='*', markersize=11, color=color,
                linestyle='none', label='best epoch' if index == 0 else None)
  axes.set_xlabel('epoch')
  axes.set_ylabel('cross-entropy per sample')
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  atomic_write(path, lambda f: figure.savefig(f, format='png'))


def summary_table(record):
  """The end-of-run table: the model beside the majority-class baseline."""
  rows = [('', 'model', 'majority'),
          ('weighted F1', f'{100 * record["f1"]:.2f}', f'{100 * record["majority_f1"]:.2f}'),
          ('accuracy', f'{100 * record["accuracy"]:.2f}', f'{100 * record["majority_accuracy"]:.2f}'),
          ('test loss', f'{record["test_loss"]:.4f}', ''),
          ('best valid loss', f'{record["best_valid_loss"]:.4f} (epoch {record["best_epoch"]})', ''),
          ('epochs run', f'{record["epochs_run"]} ({record["stopped_by"]})', ''),
          ('train samples/s', f'{record["train_samples_per_s"]:.0f}', '')]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = [f'{record["backend"]} LMF, {record["emotion"]}, seed {record["seed"]}'
           + (' (synthetic data: not the paper\'s F1)' if record['synthetic'] else '')]
  for row in rows:
    lines.append('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
  if record.get('diverged'):
    lines.append(f'warning: {record["diverged"]}; the figures are the best model\'s before that')
  return '\n'.join(lines)


def perf_report(batch_size, step_s, steps):
  """The seed's performance figures: FPS = batch_size / mean step time."""
  return {'steps': steps, 'batch_size': batch_size, 'step_time_s': step_s,
          'samples_per_s': batch_size / step_s}


def format_perf(report):
  models = report.get('num_models', 1)
  batch = (f'{models} models x batch {report["batch_size"] // models}' if models > 1
           else f'batch {report["batch_size"]}')
  return (f'{report["backend"]} {report["emotion"]} on {report["device"]}: '
          f'{report["steps"]} steps of {batch}, step time {1000 * report["step_time_s"]:.2f} ms, '
          f'{report["samples_per_s"]:.0f} {"model-" if models > 1 else ""}samples/s (FPS)')

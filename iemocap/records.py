"""What a run leaves in its workdir, written the same way by both backends.

Every file is written atomically (a temporary file in the same directory, then
a rename), so an interrupted run never leaves a half-written result behind.
"""

import csv
import dataclasses
import io
import json
import math
import os
import tempfile

from iemocap.errors import RunError

RESULTS_JSON = 'results.json'
RESULTS_CSV = 'results.csv'
METRICS_JSONL = 'metrics.jsonl'
LOSS_CURVE = 'loss_curve.png'
CONFIG_JSON = 'config.json'
CHECKPOINT = 'checkpoint.safetensors'
TRAIN_STATE = 'train_state.safetensors'

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


def _current_umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _current_umask()


def atomic_write(path, write, binary=True):
  """Calls write(file) on a temporary file beside `path`, then renames it over `path`."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
  try:
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
    with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path, text):
  atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path, obj):
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + '\n')


def read_json(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def check_finite(name, value, epoch):
  """Stops the run the moment a logged loss is NaN or inf, naming it."""
  if not math.isfinite(value):
    raise RunError(f'{name} became {value} at epoch {epoch}: training diverged; lower --lr/'
                   '--factor_lr or check the data for extreme values')
  return value


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
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


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
  """results.json and results.csv (one row per model: one here, one per seed in sweeps)."""
  missing = [k for k in RESULT_KEYS if k not in record]
  if missing:
    raise ValueError(f'result record lacks {missing}')
  write_json(os.path.join(workdir, RESULTS_JSON), record)
  write_csv(os.path.join(workdir, RESULTS_CSV), [csv_row(config, record)])


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
  return '\n'.join(lines)


def perf_report(batch_size, step_seconds):
  """The seed's performance line: FPS = batch_size / mean step time."""
  step = sum(step_seconds) / len(step_seconds)
  return {'steps': len(step_seconds), 'batch_size': batch_size, 'step_time_s': step,
          'samples_per_s': batch_size / step}

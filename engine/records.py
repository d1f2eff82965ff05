"""What a run writes in its workdir: the file names, metrics, results, tables and the loss curve.

Every file is written atomically (iemocap/files.py), so an interrupted run
never leaves a half-written result behind.
"""

import csv
import io
import json
import os

from engine.errors import RunError
from iemocap import metrics
from iemocap.data import task_of
from iemocap.files import atomic_write, write_json, write_text

RESULTS_JSON = 'results.json'
RESULTS_CSV = 'results.csv'
METRICS_JSONL = 'metrics.jsonl'
LOSS_CURVE = 'loss_curve.png'
CONFIG_JSON = 'config.json'
CHECKPOINT = 'checkpoint.safetensors'
TRAIN_STATE = 'train_state.safetensors'
MEMBERS_DIR = 'members'
TRIALS_DIR = 'trials'  # a population run as separate trials: one workdir each
LOCK = '.lmf.lock'
# Every name a run writes in its workdir: a fresh workdir holding one of them holds someone
# else's file, which a run would replace.
OUTPUTS = (RESULTS_JSON, RESULTS_CSV, METRICS_JSONL, LOSS_CURVE, CONFIG_JSON, CHECKPOINT,
           TRAIN_STATE, MEMBERS_DIR, TRIALS_DIR)


def checkpoint_in(path):
  """The checkpoint a command's --checkpoint names: a workdir stands for its best model."""
  return os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path


# The header the 2018 grid search wrote, in its order and spelling: train_iemocap.py's, and
# train_mosi.py's for regression (its "multiclass accuracy" rounds without clipping; acc7 here
# clips to [-3, 3] first, as later papers do).
_CSV_2018_HPARAMS = (
    ('audio_hidden', 'audio_hidden'), ('video_hidden', 'video_hidden'),
    ('text_hidden', 'text_hidden'), ('audio_dropout', 'audio_dropout'),
    ('video_dropout', 'video_dropout'), ('text_dropout', 'text_dropout'),
    ('factor_learning_rate', 'factor_lr'), ('learning_rate', 'lr'), ('rank', 'rank'),
    ('batch_size', 'batch_size'), ('weight_decay', 'weight_decay'))
CSV_2018_COLUMNS = {
    'classification': _CSV_2018_HPARAMS + (
        ('Best Validation CrossEntropyLoss', 'best_valid_loss'),
        ('Test CrossEntropyLoss', 'test_loss'), ('Test F1-score', 'f1'),
        ('Test Accuracy Score', 'accuracy')),
    'regression': _CSV_2018_HPARAMS + (
        ('Best Validation MAE', 'best_valid_loss'), ('Test MAE', 'mae'), ('Test Corr', 'corr'),
        ('Test multiclass accuracy', 'acc7'), ('Test binary accuracy', 'acc2_has0'),
        ('Test f1_score', 'f1_has0')),
}
# What results.json always holds (backends may add more, e.g. the device).
_RESULT_KEYS = ('emotion', 'task', 'backend', 'test_loss', 'best_valid_loss', 'best_epoch',
                'epochs_run', 'stopped_by', 'seed', 'train_samples_per_s', 'wall_s', 'data',
                'synthetic')
RESULT_KEYS = {'classification': _RESULT_KEYS + metrics.FIGURES['classification'] + (
                   'majority_f1', 'majority_accuracy'),
               'regression': _RESULT_KEYS + metrics.FIGURES['regression'] + ('baseline_mae',)}
# The per-sample loss each task's curves and tables show.
LOSS_NAMES = {'classification': 'cross-entropy', 'regression': 'L1 (MAE)'}


def member_checkpoint(member, seed):
  """A population member's checkpoint, relative to the workdir (--save_members)."""
  return os.path.join(MEMBERS_DIR, f'member{member}-seed{seed}.safetensors')


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
  """The 2018 columns of the config's task (hyperparameters, losses, test figures) followed by
  the other result keys."""
  values = {**config, **record}
  columns = CSV_2018_COLUMNS[task_of(config['emotion'])]
  header = [name for name, _ in columns]
  row = [values[key] for _, key in columns]
  for key in record:
    if key not in {k for _, k in columns} and not isinstance(record[key], (dict, list)):
      header.append(key)
      row.append(record[key])
  return header, row


def write_results(workdir, config, record):
  """results.csv, then results.json (one row per model: one here, one per seed in sweeps)."""
  missing = [k for k in RESULT_KEYS[task_of(config['emotion'])] if k not in record]
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


def plot_loss_curve(path, curves, best_epochs, title, loss_name='cross-entropy'):
  """Train and valid loss per epoch with each best epoch marked; curves: {label: history}."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
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
  axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
  axes.set_xlabel('epoch')
  axes.set_ylabel(f'{loss_name} per sample')
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  atomic_write(path, lambda f: figure.savefig(f, format='png'))


def _percent(value):
  return '' if value is None else f'{100 * value:.2f}'


def _plain(value):
  return '' if value is None else f'{value:.4f}'


def figure_rows(record):
  """(name, model, baseline) rows of a record's test figures, as its task reports them."""
  if record.get('task', 'classification') == 'classification':
    return [('weighted F1', _percent(record['f1']), _percent(record['majority_f1'])),
            ('accuracy', _percent(record['accuracy']), _percent(record['majority_accuracy']))]
  rows = [('MAE', _plain(record['mae']), _plain(record['baseline_mae'])),
          ('Pearson r', _plain(record['corr']), '')]
  for key, name in (('acc2_has0', 'binary accuracy (0 positive)'),
                    ('f1_has0', 'binary F1 (0 positive)'),
                    ('acc2_non0', 'binary accuracy (0 left out)'),
                    ('f1_non0', 'binary F1 (0 left out)'), ('acc7', '7-class accuracy'),
                    ('acc2_neg0', 'binary accuracy (0 negative)'),
                    ('f1_neg0', 'binary F1 (0 negative)'),
                    ('acc3', '3-class accuracy'), ('acc5', '5-class accuracy')):
    if record.get(key) is not None:
      rows.append((name, _percent(record[key]), ''))
  return rows


def summary_table(record):
  """The end-of-run table: the model beside the baseline (majority class; training median)."""
  baseline = 'majority' if record.get('task', 'classification') == 'classification' else 'median'
  rows = [('', 'model', baseline), *figure_rows(record),
          ('test loss', f'{record["test_loss"]:.4f}', ''),
          ('best valid loss', f'{record["best_valid_loss"]:.4f} (epoch {record["best_epoch"]})', ''),
          ('epochs run', f'{record["epochs_run"]} ({record["stopped_by"]})', ''),
          ('train samples/s', f'{record["train_samples_per_s"]:.0f}', '')]
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = [f'{record["backend"]} LMF, {record["emotion"]}, seed {record["seed"]}'
           + (f' (synthetic data: not the paper\'s {"F1" if baseline == "majority" else "figures"})'
              if record['synthetic'] else '')]
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

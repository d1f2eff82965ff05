"""A population: seeds x settings of one emotion, trained by the protocol of engine/protocol.py.

Members are every combination of swept values crossed with seeds config.seed,
config.seed + 1, ...; each is exactly the Config that `--seed=<its seed>` with
its setting would train alone. Values that change shapes split the members into
groups, one population (one compiled program) each, run one after the other.
Each member early-stops on its own; once at most half of a population still
trains, the backend packs the live ones into a smaller program, so the wall
time follows the work that is left. Every epoch is saved, so `--resume`
continues a population after a kill. The reported model is chosen on
validation only: the setting with the lowest mean best valid loss over its
seeds, then its member with the lowest best valid loss.
"""

import dataclasses
import itertools
import os
import statistics
import time
from typing import Callable, Optional, Sequence

import numpy as np
from absl import logging

from engine import early_stopping
from engine import protocol
from engine import records
from engine import state_dict
from engine import tracking
from engine.errors import CheckpointError, NoModel
from flags import presets
from flags.config import Config
from flags.errors import ConfigError
from iemocap import files
from iemocap import metrics
from iemocap.data import Dataset

# Values that keep every array's shape: one program trains all of them.
SWEEPABLE = ('lr', 'factor_lr', 'weight_decay', 'audio_dropout', 'video_dropout', 'text_dropout')
# Values that change shapes: one program per distinct combination.
SHAPE_CHANGING = ('audio_hidden', 'video_hidden', 'text_hidden', 'rank', 'batch_size')

MakePopulation = Callable[[list], protocol.Population]


def parse_sweeps(specs: Sequence[str]) -> list:
  """[(name, [values])] from `name=v1,v2` strings, in the order given."""
  sweeps, seen = [], set()
  for spec in specs:
    name, _, values = spec.partition('=')
    name = name.strip()
    if name not in SWEEPABLE + SHAPE_CHANGING:
      raise ConfigError(f'--sweep={spec}: cannot sweep {name!r}; choose from '
                        f'{", ".join(SWEEPABLE + SHAPE_CHANGING)}')
    if name in seen:
      raise ConfigError(f'--sweep names {name} twice: give all its values in one --sweep')
    seen.add(name)
    try:
      parsed = [float(v) for v in values.split(',') if v.strip()]
    except ValueError:
      raise ConfigError(f'--sweep={spec}: values must be numbers separated by commas') from None
    if not parsed:
      raise ConfigError(f'--sweep={spec}: give at least one value, e.g. {name}=0.001,0.003')
    if name in SHAPE_CHANGING:
      if any(v != int(v) for v in parsed):
        raise ConfigError(f'--sweep={spec}: {name} takes whole numbers')
      parsed = [int(v) for v in parsed]
    sweeps.append((name, parsed))
  return sweeps


def member_configs(config: Config, num_seeds: int, sweeps: Sequence = ()) -> list:
  """Every combination of swept values, crossed with seeds config.seed .. config.seed + N - 1."""
  if num_seeds < 1:
    raise ConfigError(f'--num_seeds={num_seeds} must be >= 1')
  names = [name for name, _ in sweeps]
  members = []
  for values in itertools.product(*(v for _, v in sweeps)):
    for offset in range(num_seeds):
      members.append(dataclasses.replace(config, seed=config.seed + offset,
                                         **dict(zip(names, values))))
  return members


def shape_groups(configs: Sequence[Config]) -> list:
  """Member indices grouped by shape-changing values, in order of first appearance."""
  groups = {}
  for index, config in enumerate(configs):
    groups.setdefault(tuple(getattr(config, n) for n in SHAPE_CHANGING), []).append(index)
  return list(groups.values())


def should_pack(training: int, size: int, granule: int = 1) -> bool:
  """Whether `training` live models of a population of `size` go into a smaller program: when
  that program, padded to a multiple of `granule` models, is at most half the present one."""
  padded = lambda n: -(-n // granule) * granule
  return 0 < training and 2 * padded(training) <= padded(size)


@dataclasses.dataclass
class Finished:
  """A member whose training is over: its best weights and its test loss and logits."""
  arrays: Optional[dict]
  test_loss_sum: Optional[float]
  test_logits: Optional[np.ndarray]


class _Run:
  """One population run's state across groups, packs and restarts; the source of its files."""

  def __init__(self, config, members, dataset):
    self.config, self.members, self.dataset = config, members, dataset
    self.groups = shape_groups(members)
    self.progress = [protocol.MemberProgress(early_stopping.EarlyStopping(m.patience))
                     for m in members]
    self.history = {}  # epoch -> {'train_loss': {member: loss}, 'valid_loss': {...}}
    self.finished = {}  # member -> Finished
    self.timings = []  # [train seconds, models trained, includes compilation] per epoch
    self.earlier_s = 0.0
    self.group, self.epoch, self.live = 0, 0, list(self.groups[0])
    self.device = ''

  def restore(self, workdir):
    """Reads the saved train state; returns (the live population's arrays, progress, path)."""
    arrays, saved, path = state_dict.read_train_state(workdir)
    try:
      self.progress = [protocol.MemberProgress.from_state(s) for s in saved['members']]
      self.group, self.epoch, self.live = saved['group'], saved['epoch'], saved['live']
      self.timings, self.earlier_s = saved['timings'], saved['elapsed_s']
      finished = saved['finished']
    except (KeyError, TypeError):
      raise CheckpointError(f'{path} holds no population progress: it was written by a single '
                            'run; start the run again in another --workdir') from None
    if len(self.progress) != len(self.members):
      raise CheckpointError(f'{path} holds {len(self.progress)} models, this run has '
                            f'{len(self.members)}: choose another --workdir')
    for member, test_loss_sum in finished.items():
      member = int(member)
      prefix = f'finished/{member}/'
      if test_loss_sum is None:
        self.finished[member] = Finished(None, None, None)
        continue
      shapes = state_dict.shapes(self.members[member], self.dataset.input_dims)
      self.finished[member] = Finished(
          {k: state_dict.stored(arrays, prefix + k, shapes[k], path) for k in shapes},
          test_loss_sum, state_dict.stored(arrays, prefix + 'test_logits',
                                           (self.dataset.test.n, self.config.output_dim), path))
    for row in records.read_metrics(workdir):
      self.history[row['epoch']] = {name: {int(m): v for m, v in row[name].items()}
                                    for name in ('train_loss', 'valid_loss')}
    live_arrays = {k[len('live/'):]: v for k, v in arrays.items() if k.startswith('live/')}
    return live_arrays, saved, path

  def save(self, workdir, population, started):
    """train_state.safetensors after an epoch: the live population (None between groups) and
    every finished member."""
    arrays, extras = population.train_state() if population is not None else ({}, {})
    out = {f'live/{k}': v for k, v in arrays.items()}
    finished = {}
    for member, done in self.finished.items():
      finished[str(member)] = done.test_loss_sum
      if done.arrays is not None:
        out.update({f'finished/{member}/{k}': v for k, v in done.arrays.items()})
        out[f'finished/{member}/test_logits'] = np.asarray(done.test_logits, np.float32)
    state_dict.write_train_state(workdir, out, {
        'epoch': self.epoch, 'group': self.group, 'live': self.live,
        'members': [p.state() for p in self.progress], 'finished': finished,
        'timings': self.timings, 'elapsed_s': self.earlier_s + time.perf_counter() - started,
        **extras})

  def finish(self, population, ids, members):
    """Tests the best models of `members` (a subset of the population `ids`) and keeps them."""
    test_sum, logits = population.evaluate('test', best=True)
    tested = [k for k, member in enumerate(ids)
              if member in members and self.progress[member].stopper.best_epoch]
    for k, arrays in zip(tested, population.best_state_dicts(tested)):
      self.finished[ids[k]] = Finished(arrays, float(test_sum[k]), np.asarray(logits[k]))
    for member in members:
      if not self.progress[member].stopper.best_epoch:  # never had a finite valid loss
        self.finished[member] = Finished(None, None, None)


def train_population(config: Config, members: list, make_population: MakePopulation,
                     dataset: Dataset, is_synthetic: bool, status: str, save_members: bool = False,
                     on_epoch_end: Optional[protocol.OnEpochEnd] = None) -> dict:
  """Runs (or resumes) every member in config.workdir and writes the outputs; returns
  results.json's record (the chosen model, mean and spread, one entry per member)."""
  workdir = config.workdir
  started = time.perf_counter()
  run = _Run(config, members, dataset)
  saved = None
  if status == 'resume':
    live_arrays, saved_progress, path = run.restore(workdir)
    saved = (live_arrays, saved_progress, path)
    logging.info('resuming %s: group %d of %d after epoch %d, %d models still training',
                 workdir, run.group + 1, len(run.groups), run.epoch, len(run.live))
  backend_name = None
  while run.group < len(run.groups):
    ids = run.live
    configs = [members[i] for i in ids]
    population = make_population(configs)
    backend_name, run.device = population.name, population.describe_device()
    logging.info('training %d models of shape %s in one program', len(ids),
                 {n: getattr(configs[0], n) for n in SHAPE_CHANGING})
    if saved is not None and run.epoch > 0:  # not at the start of a group
      population.load_train_state(*saved)
    saved = None
    compiles = True
    group = run.groups[run.group]
    rates = _rates([members[i] for i in group], group)
    tracker = tracking.open_tracker(
        tracking.group_logdir(workdir, run.group, len(run.groups)),
        tracking.population_replay(run.history, group, rates) if run.epoch > 0 else ())
    while run.epoch < config.epochs:
      training = [run.progress[i].training for i in ids]
      if not any(training):
        break
      run.epoch += 1
      progress = [run.progress[i] for i in ids]
      result = protocol.run_epoch(population, run.epoch, configs, progress, dataset)
      run.timings.append([round(result.train_s, 4), int(result.trained.sum()), compiles])
      compiles = False
      row = run.history.setdefault(run.epoch, {'train_loss': {}, 'valid_loss': {}})
      for k, member in enumerate(ids):
        if result.trained[k] and not run.progress[member].diverged:
          row['train_loss'][member] = float(result.train_loss[k])
          row['valid_loss'][member] = float(result.valid_loss[k])
        elif result.trained[k]:
          logging.warning('model %d (seed %d): %s', member, members[member].seed,
                          run.progress[member].diverged)
      still = [i for i in ids if run.progress[i].training]
      logging.info('epoch %d: %d of %d models still training, best valid losses %s', run.epoch,
                   len(still), len(ids),
                   ' '.join(f'{run.progress[m].stopper.best_valid_loss:.4f}' for m in ids))
      if (should_pack(len(still), len(ids), population.granule)
          and run.epoch < config.epochs):
        run.finish(population, ids, [i for i in ids if i not in still])
        population.pack(np.array([i in still for i in ids]))
        ids = run.live = still
        configs = [members[i] for i in ids]
        compiles = True
        logging.info('packed the %d models still training into a smaller program', len(ids))
      write_metrics(workdir, run.history)
      tracker.epoch(run.epoch, tracking.population_scalars(
          row['train_loss'], row['valid_loss'],
          {m: run.progress[m].stopper.best_valid_loss if run.progress[m].stopper.best_epoch
           else None for m in group}, rates))
      run.save(workdir, population, started)
      protocol.stop_point(on_epoch_end, run.epoch, workdir)
    tracker.close()
    run.finish(population, ids, ids)
    run.group += 1
    run.epoch = 0
    run.live = list(run.groups[run.group]) if run.group < len(run.groups) else []
    if run.group < len(run.groups):
      run.save(workdir, None, started)  # a kill now resumes at the next group
  member_records = [member_record(m, members[m], run.progress[m], run.finished[m], dataset)
                    for m in range(len(members))]
  record = summarise(config, members, member_records, dataset, is_synthetic,
                     backend=backend_name, device=run.device,
                     throughput=_throughput(run.timings, dataset.train.n),
                     wall_s=run.earlier_s + time.perf_counter() - started)
  write_outputs(config, members, run.history, lambda m: run.finished[m].arrays, record,
                save_members)
  return record


def _rates(configs, ids):
  """A group's learning rates as scalars: one series each, or one per member when swept."""
  scalars = {}
  for name in ('lr', 'factor_lr'):
    values = {getattr(c, name) for c in configs}
    if len(values) == 1:
      scalars[name] = values.pop()
    else:
      scalars.update({f'{name}/member{m}': getattr(c, name) for m, c in zip(ids, configs)})
  return scalars


def write_metrics(workdir: str, history: dict) -> None:
  """metrics.jsonl of a population: per epoch, every member's losses keyed by its index."""
  records.write_metrics(workdir, [
      {'epoch': epoch, 'train_loss': {str(k): v for k, v in row['train_loss'].items()},
       'valid_loss': {str(k): v for k, v in row['valid_loss'].items()}}
      for epoch, row in sorted(history.items())])


def _throughput(timings, n_train):
  """Model-samples per second over the epochs that compiled nothing (all, if every one did)."""
  rows = [t for t in timings if not t[2]] or timings
  seconds = sum(t[0] for t in rows)
  return n_train * sum(t[1] for t in rows) / seconds if seconds else 0.0


def member_record(member, config, progress, done, dataset):
  record = {'member': member, 'seed': config.seed, **config.hparams(),
            'best_epoch': progress.stopper.best_epoch,
            'best_valid_loss': progress.stopper.best_valid_loss,
            'epochs_run': progress.epochs_run, 'stopped_by': progress.stopped_by}
  if done.arrays is None:  # never had a finite valid loss
    return {**record, 'best_valid_loss': None, **no_figures(dataset.task), 'test_loss': None}
  return {**record, **protocol.test_record(dataset, done.test_logits),
          'test_loss': dataset.mean_loss(done.test_loss_sum, 'test')}


def no_figures(task):
  """The test figures of a model that has none (it diverged before its first epoch ended)."""
  return dict.fromkeys(metrics.FIGURES[task])


def _mean_and_spread(runs, key):
  """{key_mean, key_std} over the runs that have the figure (None when none has)."""
  values = [r[key] for r in runs if r.get(key) is not None]
  return {f'{key}_mean': statistics.fmean(values) if values else None,
          f'{key}_std': (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None}


def _setting(record):
  """The hyperparameters that make a model's setting: everything swept, not the seed."""
  return tuple(record[name] for name in SWEEPABLE + SHAPE_CHANGING)


def summarise(config: Config, members: Sequence[Config], member_records: Sequence[dict],
              dataset: Dataset, is_synthetic: bool, *, backend: str, device: str,
              throughput: float, wall_s: float) -> dict:
  """results.json: the chosen setting's mean and spread over seeds, and its chosen model."""
  candidates = [r for r in member_records if r['best_valid_loss'] is not None]
  if not candidates:
    raise NoModel('every model diverged: lower --lr/--factor_lr')
  settings = {}
  for r in candidates:
    settings.setdefault(_setting(r), []).append(r)
  figures = metrics.FIGURES[dataset.task]
  summaries = []
  for runs in settings.values():
    summary = {**{n: runs[0][n] for n in SWEEPABLE + SHAPE_CHANGING},
               'models': len(runs), 'seeds': [r['seed'] for r in runs],
               'valid_loss_mean': statistics.fmean(r['best_valid_loss'] for r in runs)}
    for key in figures:
      summary.update(_mean_and_spread(runs, key))
    summaries.append(summary)
  best_setting = min(summaries, key=lambda s: s['valid_loss_mean'])
  chosen = min(settings[tuple(best_setting[n] for n in SWEEPABLE + SHAPE_CHANGING)],
               key=lambda r: r['best_valid_loss'])
  per_target = {k: chosen[k] for k in ('mae_per_target', 'corr_per_target') if k in chosen}
  return {
      'emotion': config.emotion, 'task': dataset.task, 'backend': backend, 'device': device,
      # .get: members a resumed run recorded before a figure existed lack it (None, not known).
      **{k: chosen.get(k) for k in figures}, **per_target, 'test_loss': chosen['test_loss'],
      'best_valid_loss': chosen['best_valid_loss'], 'best_epoch': chosen['best_epoch'],
      'epochs_run': chosen['epochs_run'], 'stopped_by': chosen['stopped_by'],
      'seed': chosen['seed'], 'chosen_member': chosen['member'],
      'selection': 'setting by mean valid loss over seeds, then its model by valid loss; '
                   'test figures never choose',
      **metrics.baseline_figures(dataset.task, dataset.train.label, dataset.test.label),
      'num_models': len(members), 'models_in_setting': best_setting['models'],
      **{k: best_setting[k] for key in figures for k in (f'{key}_mean', f'{key}_std')},
      'train_samples_per_s': round(throughput, 1),
      'wall_s': round(wall_s, 3), 'data': dataset.path, 'synthetic': is_synthetic,
      'n_train': dataset.train.n, 'n_valid': dataset.valid.n, 'n_test': dataset.test.n,
      'workdir': os.path.abspath(config.workdir), 'settings': summaries,
      'members': member_records,
  }


def write_outputs(config: Config, members: Sequence[Config], history: dict,
                  best_arrays: Callable[[int], Optional[dict]], record: dict,
                  save_members: bool) -> None:
  """results.csv, the loss curves, the chosen model's checkpoint (and every member's with
  `save_members`), then results.json. `history`: {epoch: {'train_loss': {member: loss},
  'valid_loss': {...}}}; `best_arrays(member)`: its best 2018 state_dict, None if it has none."""
  workdir, backend = config.workdir, record['backend']
  member_records = record['members']
  rows = []
  for member_config, member in zip(members, member_records):
    header, row = records.csv_row(member_config.to_dict(), {
        'best_valid_loss': member['best_valid_loss'], 'test_loss': member['test_loss'],
        **{k: member.get(k) for k in metrics.FIGURES[record['task']]},
        'seed': member['seed'], 'best_epoch': member['best_epoch'],
        'epochs_run': member['epochs_run'], 'stopped_by': member['stopped_by'],
        'chosen': member['member'] == record['chosen_member']})
    rows.append((header, row))
  records.write_csv(os.path.join(workdir, records.RESULTS_CSV), rows)
  curves, best_epochs = {}, {}
  for member in member_records:
    index = member['member']
    label = f'seed {member["seed"]}' + (f' #{index}' if len(members) > 1 else '')
    curves[label] = [{'epoch': epoch, 'train_loss': row['train_loss'][index],
                      'valid_loss': row['valid_loss'][index]}
                     for epoch, row in sorted(history.items()) if index in row['valid_loss']]
    best_epochs[label] = member['best_epoch']
  records.plot_loss_curve(os.path.join(workdir, records.LOSS_CURVE), curves, best_epochs,
                          f'{backend} LMF, {config.emotion}: {len(members)} models, valid loss '
                          'per epoch', records.LOSS_NAMES[record['task']])
  chosen = record['chosen_member']
  protocol.save_checkpoint(os.path.join(workdir, records.CHECKPOINT), best_arrays(chosen),
                           members[chosen], backend,
                           epoch=member_records[chosen]['best_epoch'], member=chosen)
  if save_members:
    for index, member in enumerate(member_records):
      arrays = best_arrays(index) if member['best_epoch'] else None
      if arrays is not None:
        protocol.save_checkpoint(os.path.join(workdir, records.member_checkpoint(index,
                                                                                member['seed'])),
                                 arrays, members[index], backend, epoch=member['best_epoch'],
                                 member=index)
  tracker = tracking.open_tracker(workdir)
  tracker.finish({**members[chosen].hparams(), 'num_models': len(members)},
                 tracking.result_figures(record))
  tracker.close()
  files.write_json(os.path.join(workdir, records.RESULTS_JSON), record)  # last: marks it done


def format_members(record: dict) -> str:
  """The per-target summary: chosen model beside the mean and spread over models."""
  setting = (f', the chosen setting\'s {record["models_in_setting"]} seeds'
             if record['models_in_setting'] != record['num_models'] else '')
  classification = record.get('task', 'classification') == 'classification'
  lines = [f'{record["backend"]} LMF, {record["emotion"]}: {record["num_models"]} models{setting}'
           + (f' (synthetic data: not the paper\'s {"F1" if classification else "figures"})'
              if record['synthetic'] else '')]
  if classification:
    lines += [f'  weighted F1  mean {100 * record["f1_mean"]:.2f} +- {100 * record["f1_std"]:.2f}  '
              f'chosen (seed {record["seed"]}, lowest valid loss) {100 * record["f1"]:.2f}  '
              f'majority {100 * record["majority_f1"]:.2f}',
              f'  accuracy     mean {100 * record["accuracy_mean"]:.2f} +- '
              f'{100 * record["accuracy_std"]:.2f}  chosen {100 * record["accuracy"]:.2f}  '
              f'majority {100 * record["majority_accuracy"]:.2f}']
  else:
    lines.append(f'  MAE  mean {record["mae_mean"]:.4f} +- {record["mae_std"]:.4f}  chosen (seed '
                 f'{record["seed"]}, lowest valid loss) {record["mae"]:.4f}  training median '
                 f'{record["baseline_mae"]:.4f}')
    if record['corr'] is not None and record['corr_mean'] is not None:
      lines.append(f'  Pearson r  mean {record["corr_mean"]:.4f} +- {record["corr_std"]:.4f}  '
                   f'chosen {record["corr"]:.4f}')
  lines.append(f'  {record["train_samples_per_s"]:.0f} model-samples/s, {record["wall_s"]:.1f} s')
  return '\n'.join(lines)


def emotions_table(results: Sequence[dict]) -> str:
  """One row per emotion: mean +- std F1, the chosen model's F1, the baseline, published figures."""
  sources = list(presets.REPORTED_F1)
  header = ['emotion', 'models', 'F1 mean +- std', 'chosen F1', 'majority F1'] + sources
  rows = [header]
  for record in results:
    reported = [f'{presets.REPORTED_F1[s][record["emotion"]]:.2f}' for s in sources]
    rows.append([record['emotion'], str(record['num_models']),
                 f'{100 * record["f1_mean"]:.2f} +- {100 * record["f1_std"]:.2f}',
                 f'{100 * record["f1"]:.2f}', f'{100 * record["majority_f1"]:.2f}', *reported])
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  if any(r['synthetic'] for r in results):
    lines.append('Our figures are on synthetic data: they are not comparable with the published '
                 'real-IEMOCAP figures beside them.')
  return '\n'.join(lines)

"""Many LMF models trained as one program: seeds and hyperparameter sweeps under `jax.vmap`.

`python -m lmf_jax.train --emotion=sad --num_seeds=N [--sweep=lr=a,b ...] [--emotion=all]`.
Every state leaf gets a leading model axis; one jitted step trains all models
on their own minibatches (each model has its own init, dropout and shuffle
keys, exactly those of `--seed=<its seed>` trained alone). Each model early-
stops on its own valid loss: a stopped model's state is frozen by a mask, and
the run ends when all have stopped. Values that change shapes (hidden sizes,
rank, batch size) split the models into groups, one compiled program each.
The reported model is the one with the lowest valid loss, never chosen on test.
"""

import dataclasses
import functools
import itertools
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from flags import presets
from flags import state_dict
from flags.errors import ConfigError
from iemocap import batching
from iemocap import metrics
from iemocap import records
from iemocap.errors import RunError
from lmf_jax import checkpoint
from lmf_jax import device as jax_device
from lmf_jax import model as model_lib
from lmf_jax import optimizer
from lmf_jax import train

# Values that keep every array's shape: vectorised in one program.
SWEEPABLE = ('lr', 'factor_lr', 'weight_decay', 'audio_dropout', 'video_dropout', 'text_dropout')
# Values that change shapes: one compiled program per distinct combination.
SHAPE_CHANGING = ('audio_hidden', 'video_hidden', 'text_hidden', 'rank', 'batch_size')
DROPOUTS = ('audio_dropout', 'video_dropout', 'text_dropout')


def parse_sweeps(specs):
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


def member_configs(config, num_seeds, sweeps):
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


def shape_groups(configs):
  """Member indices grouped by shape-changing values, in order of first appearance."""
  groups = {}
  for index, config in enumerate(configs):
    groups.setdefault(tuple(getattr(config, n) for n in SHAPE_CHANGING), []).append(index)
  return list(groups.values())


def _member_step(state, data, index, rng, dropouts, active, *, model, tx):
  """train.train_step for one model; a stopped model (active False) keeps its state."""
  new_state, step_metrics = train.train_step(state, train.gather(data, index), rng, model=model,
                                             tx=tx, dropouts=dropouts)
  state = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old), new_state, state)
  return state, jnp.where(active, step_metrics['loss_sum'], 0.0)


def _select(mask, new, old):
  return jax.tree_util.tree_map(lambda a, b: jnp.where(mask, a, b), new, old)


class Ensemble:
  """Models of one shape trained side by side: a leading model axis on every state leaf."""

  def __init__(self, configs, dataset):
    base = configs[0]
    state_dict.check_fits_in_memory(base, dataset.input_dims, models=len(configs))
    self.configs = configs
    self.model = model_lib.from_config(base)
    self.batch_size = base.batch_size
    keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.PRNGKey(c.seed) for c in configs]))
    init_keys, self.dropout_keys = keys[:, 0], keys[:, 1]
    seq_len = dataset.train.text.shape[1]
    variables = jax.vmap(lambda k: model_lib.init(self.model, k, dataset.input_dims, seq_len))(
        init_keys)
    one_model = jax.tree_util.tree_map(lambda x: x[0], variables['params'])
    self.tx = optimizer.make(base, one_model)
    opt_state = optimizer.set_hyperparams(jax.vmap(self.tx.init)(variables['params']), configs)
    self.state = train.TrainState(step=jnp.zeros(len(configs), jnp.int32),
                                  params=variables['params'],
                                  batch_stats=variables['batch_stats'], opt_state=opt_state)
    self.best = jax.tree_util.tree_map(jnp.copy, self.state.variables())
    # Swept dropout rates travel as traced values; otherwise the static rates are used,
    # which is exactly the single-model program.
    rates = np.asarray([[getattr(c, d) for d in DROPOUTS] for c in configs], np.float32)
    self.dropouts = jnp.asarray(rates) if (rates != rates[0]).any() else None
    self.data = {name: jax.device_put(dataset.split(name).arrays())
                 for name in ('train', 'valid', 'test')}
    in_axes = (0, None, 0, 0, 0 if self.dropouts is not None else None, 0)
    step = functools.partial(_member_step, model=self.model, tx=self.tx)
    self._step = jax.jit(jax.vmap(step, in_axes=in_axes), donate_argnums=0)
    self._eval = jax.jit(jax.vmap(functools.partial(train.eval_step, model=self.model),
                                  in_axes=(0, None)))
    self._keep_best = jax.jit(jax.vmap(_select))

  def train_epoch(self, epoch, active):
    """Summed train loss per model (zero for stopped ones); one host sync."""
    n = self.data['train']['label'].shape[0]
    orders = [batching.epoch_batches(n, self.batch_size, c.seed, epoch) for c in self.configs]
    active = jnp.asarray(active)
    losses = []
    for step in range(len(orders[0])):
      index = np.stack([order[step] for order in orders])
      self.state, loss = self._step(self.state, self.data['train'], index, self.dropout_keys,
                                    self.dropouts, active)
      losses.append(loss)
    return np.asarray(jnp.sum(jnp.stack(losses), axis=0))

  def evaluate(self, split, best):
    loss, logits = self._eval(self.best if best else self.state.variables(), self.data[split])
    return np.asarray(loss), np.asarray(logits)

  def keep_best(self, improved):
    self.best = self._keep_best(jnp.asarray(improved), self.state.variables(), self.best)

  def member_variables(self, index):
    return jax.device_get(jax.tree_util.tree_map(lambda x: x[index], self.best))

  def time_steps(self, steps, warmup=2):
    """Seconds per vmapped train step on full-size batches (compilation excluded)."""
    n = self.data['train']['label'].shape[0]
    orders = [[b for b in batching.epoch_batches(n, self.batch_size, c.seed, 1)
               if len(b) == self.batch_size] or batching.epoch_batches(n, self.batch_size, c.seed, 1)
              for c in self.configs]
    active = jnp.ones(len(self.configs), bool)
    run = lambda i: self._step(self.state, self.data['train'],
                               np.stack([o[i % len(o)] for o in orders]), self.dropout_keys,
                               self.dropouts, active)[0]
    for i in range(warmup):
      self.state = run(i)
    jax.block_until_ready(self.state)
    tick = time.perf_counter()
    for i in range(steps):
      self.state = run(i)
    jax.block_until_ready(self.state)
    return (time.perf_counter() - tick) / steps, len(orders[0][0])


def _train_group(ensemble, dataset, history, stoppers, epochs_run, indices):
  """Runs one group's epochs, filling `history`, `stoppers` and `epochs_run` for its members."""
  configs = ensemble.configs
  n_train, n_valid = dataset.train.n, dataset.valid.n
  local = {member: k for k, member in enumerate(indices)}
  active = np.ones(len(configs), bool)
  diverged = np.zeros(len(configs), bool)
  epochs = configs[0].epochs
  train_seconds = []
  for epoch in range(1, epochs + 1):
    tick = time.perf_counter()
    train_sum = ensemble.train_epoch(epoch, active)
    train_seconds.append((time.perf_counter() - tick, int(active.sum())))
    valid_sum, _ = ensemble.evaluate('valid', best=False)
    improved = np.zeros(len(configs), bool)
    row = history.setdefault(epoch, {'epoch': epoch, 'train_loss': {}, 'valid_loss': {}})
    for member, k in local.items():
      if not active[k]:
        continue
      train_loss, valid_loss = train_sum[k] / n_train, valid_sum[k] / n_valid
      if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
        diverged[k], active[k] = True, False  # a diverged model stops; the others go on
        logging.warning('model %d (seed %d) diverged at epoch %d', member, configs[k].seed, epoch)
        continue
      row['train_loss'][member], row['valid_loss'][member] = float(train_loss), float(valid_loss)
      improved[k] = stoppers[member].update(epoch, float(valid_loss))
      epochs_run[member] = epoch
      active[k] = not stoppers[member].should_stop
    ensemble.keep_best(improved)
    logging.info('epoch %d: %d of %d models still training, best valid losses %s', epoch,
                 int(active.sum()), len(configs),
                 ' '.join(f'{stoppers[m].best_valid_loss:.4f}' for m in indices))
    if not active.any():
      break
  return diverged, train_seconds


def _throughput(group_seconds, n_train):
  """Model-samples per second over all groups (which run one after the other), leaving out each
  group's first epoch (it compiles). group_seconds: per group, [(seconds, models trained)]."""
  rows = [row for seconds in group_seconds for row in (seconds[1:] or seconds)]
  total = sum(s for s, _ in rows)
  return n_train * sum(active for _, active in rows) / total if total else 0.0


def _member_record(member, config, stopper, epochs_run, diverged, test_loss, logits, labels):
  record = {'member': member, 'seed': config.seed, **config.hparams(),
            'best_epoch': stopper.best_epoch, 'best_valid_loss': stopper.best_valid_loss,
            'epochs_run': epochs_run,
            'stopped_by': ('diverged' if diverged else
                           'early_stopping' if stopper.should_stop else 'max_epochs')}
  if stopper.best_epoch == 0:  # never had a finite valid loss
    return {**record, 'best_valid_loss': None, 'f1': None, 'accuracy': None, 'test_loss': None}
  result = metrics.classification_metrics(labels, logits)
  return {**record, 'f1': result['f1'], 'accuracy': result['accuracy'],
          'test_loss': float(test_loss) / labels.shape[0]}


def train_members(config, num_seeds=1, sweeps=(), save_members=False):
  """Trains every member for one emotion in config.workdir; returns results.json's record."""
  dataset, is_synthetic, data_note = records.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  member_configs(config, num_seeds, sweeps)  # refuse bad values before the workdir is claimed
  options = {'num_seeds': num_seeds, 'sweep': [[n, v] for n, v in sweeps]}
  with records.claim_workdir(config, train.BACKEND, options, resume=False) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return records.read_json(os.path.join(config.workdir, records.RESULTS_JSON))
    return _train_claimed(config, num_seeds, sweeps, save_members, dataset, is_synthetic)


def _train_claimed(config, num_seeds, sweeps, save_members, dataset, is_synthetic):
  """train_members' work, in a workdir this process holds."""
  members = member_configs(config, num_seeds, sweeps)
  started = time.perf_counter()
  stoppers = [records.EarlyStopping(m.patience) for m in members]
  epochs_run = [0] * len(members)
  history, member_records, throughput = {}, [None] * len(members), []
  variables = {}
  for indices in shape_groups(members):
    group = [members[i] for i in indices]
    logging.info('training %d models of shape %s in one program', len(group),
                 {n: getattr(group[0], n) for n in SHAPE_CHANGING})
    ensemble = Ensemble(group, dataset)
    diverged, seconds = _train_group(ensemble, dataset, history, stoppers, epochs_run, indices)
    throughput.append(seconds)
    test_loss, logits = ensemble.evaluate('test', best=True)
    for k, member in enumerate(indices):
      member_records[member] = _member_record(member, members[member], stoppers[member],
                                              epochs_run[member], diverged[k], test_loss[k],
                                              logits[k], dataset.test.label)
      variables[member] = ensemble.member_variables(k)
  record = _summary(config, members, member_records, dataset, is_synthetic,
                    _throughput(throughput, dataset.train.n), time.perf_counter() - started)
  _write_outputs(config, members, member_records, record, history, variables, save_members)
  return record


def _setting(record):
  """The hyperparameters that make a model's setting: everything swept, not the seed."""
  return tuple(record[name] for name in SWEEPABLE + SHAPE_CHANGING)


def _summary(config, members, member_records, dataset, is_synthetic, throughput, wall_s):
  """results.json: the chosen setting's mean and spread over seeds, and its chosen model.

  Both choices use validation only: the setting with the lowest mean best-valid-loss over its
  seeds, then its model with the lowest best valid loss.
  """
  candidates = [r for r in member_records if r['best_valid_loss'] is not None]
  if not candidates:
    raise RunError('every model diverged: lower --lr/--factor_lr')
  settings = {}
  for r in candidates:
    settings.setdefault(_setting(r), []).append(r)
  spread = lambda values: statistics.stdev(values) if len(values) > 1 else 0.0
  summaries = []
  for runs in settings.values():
    f1s, accuracies = [r['f1'] for r in runs], [r['accuracy'] for r in runs]
    summaries.append({**{n: runs[0][n] for n in SWEEPABLE + SHAPE_CHANGING},
                      'models': len(runs), 'seeds': [r['seed'] for r in runs],
                      'valid_loss_mean': statistics.fmean(r['best_valid_loss'] for r in runs),
                      'f1_mean': statistics.fmean(f1s), 'f1_std': spread(f1s),
                      'accuracy_mean': statistics.fmean(accuracies),
                      'accuracy_std': spread(accuracies)})
  best_setting = min(summaries, key=lambda s: s['valid_loss_mean'])
  chosen = min(settings[tuple(best_setting[n] for n in SWEEPABLE + SHAPE_CHANGING)],
               key=lambda r: r['best_valid_loss'])
  majority_f1, majority_accuracy = metrics.majority_baseline(dataset.train.label,
                                                             dataset.test.label)
  return {
      'emotion': config.emotion, 'backend': train.BACKEND, 'device': train.device_description(),
      'f1': chosen['f1'], 'accuracy': chosen['accuracy'], 'test_loss': chosen['test_loss'],
      'best_valid_loss': chosen['best_valid_loss'], 'best_epoch': chosen['best_epoch'],
      'epochs_run': chosen['epochs_run'], 'stopped_by': chosen['stopped_by'],
      'seed': chosen['seed'], 'chosen_member': chosen['member'],
      'selection': 'setting by mean valid loss over seeds, then its model by valid loss; '
                   'test figures never choose',
      'majority_f1': majority_f1, 'majority_accuracy': majority_accuracy,
      'num_models': len(members), 'models_in_setting': best_setting['models'],
      'f1_mean': best_setting['f1_mean'], 'f1_std': best_setting['f1_std'],
      'accuracy_mean': best_setting['accuracy_mean'],
      'accuracy_std': best_setting['accuracy_std'],
      'train_samples_per_s': round(throughput, 1),
      'wall_s': round(wall_s, 3), 'data': dataset.path, 'synthetic': is_synthetic,
      'n_train': dataset.train.n, 'n_valid': dataset.valid.n, 'n_test': dataset.test.n,
      'workdir': os.path.abspath(config.workdir), 'settings': summaries,
      'members': member_records,
  }


def _write_outputs(config, members, member_records, record, history, variables, save_members):
  workdir = config.workdir
  rows = []
  for member_config, member in zip(members, member_records):
    header, row = records.csv_row(member_config.to_dict(), {
        **{k: member[k] for k in ('best_valid_loss', 'test_loss', 'f1', 'accuracy')},
        'seed': member['seed'], 'best_epoch': member['best_epoch'],
        'epochs_run': member['epochs_run'], 'stopped_by': member['stopped_by'],
        'chosen': member['member'] == record['chosen_member']})
    rows.append((header, row))
  records.write_csv(os.path.join(workdir, records.RESULTS_CSV), rows)
  lines = [{'epoch': e, 'train_loss': r['train_loss'], 'valid_loss': r['valid_loss']}
           for e, r in sorted(history.items())]
  records.write_metrics(workdir, [{'epoch': r['epoch'],
                                   'train_loss': {str(k): v for k, v in r['train_loss'].items()},
                                   'valid_loss': {str(k): v for k, v in r['valid_loss'].items()}}
                                  for r in lines])
  curves, best_epochs = {}, {}
  for member in member_records:
    label = f'seed {member["seed"]}' + (f' #{member["member"]}' if len(members) > 1 else '')
    curves[label] = [{'epoch': r['epoch'], 'train_loss': r['train_loss'][member['member']],
                      'valid_loss': r['valid_loss'][member['member']]}
                     for r in lines if member['member'] in r['valid_loss']]
    best_epochs[label] = member['best_epoch']
  records.plot_loss_curve(os.path.join(workdir, records.LOSS_CURVE), curves, best_epochs,
                          f'jax LMF, {config.emotion}: {len(members)} models, valid loss per epoch')
  chosen = record['chosen_member']
  checkpoint.save(os.path.join(workdir, records.CHECKPOINT), variables[chosen], members[chosen],
                  {'epoch': member_records[chosen]['best_epoch'], 'member': chosen})
  if save_members:
    for index, member in enumerate(member_records):
      if member['best_epoch']:
        checkpoint.save(os.path.join(workdir, records.MEMBERS_DIR, f'member{index}-seed{member["seed"]}'
                                     '.safetensors'), variables[index], members[index],
                        {'epoch': member['best_epoch'], 'member': index})
  records.write_json(os.path.join(workdir, records.RESULTS_JSON), record)  # last: marks it done


def format_members(record):
  """The per-emotion summary: chosen model beside the mean and spread over models."""
  setting = (f', the chosen setting\'s {record["models_in_setting"]} seeds'
             if record['models_in_setting'] != record['num_models'] else '')
  lines = [f'jax LMF, {record["emotion"]}: {record["num_models"]} models{setting}'
           + (' (synthetic data: not the paper\'s F1)' if record['synthetic'] else ''),
           f'  weighted F1  mean {100 * record["f1_mean"]:.2f} +- {100 * record["f1_std"]:.2f}  '
           f'chosen (seed {record["seed"]}, lowest valid loss) {100 * record["f1"]:.2f}  '
           f'majority {100 * record["majority_f1"]:.2f}',
           f'  accuracy     mean {100 * record["accuracy_mean"]:.2f} +- '
           f'{100 * record["accuracy_std"]:.2f}  chosen {100 * record["accuracy"]:.2f}  '
           f'majority {100 * record["majority_accuracy"]:.2f}',
           f'  {record["train_samples_per_s"]:.0f} model-samples/s, {record["wall_s"]:.1f} s']
  return '\n'.join(lines)


def emotions_table(results):
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


def measure_performance(config, num_seeds, steps):
  """Model-samples/s of one vmapped step over `num_seeds` models (compilation excluded)."""
  dataset, _, data_note = records.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  ensemble = Ensemble(member_configs(config, num_seeds, ()), dataset)
  step_s, batch_size = ensemble.time_steps(steps)
  report = records.perf_report(batch_size * num_seeds, step_s, steps)
  return {'backend': train.BACKEND, 'device': train.device_description(),
          'emotion': config.emotion, 'num_models': num_seeds, **report}

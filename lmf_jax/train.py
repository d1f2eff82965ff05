"""Train LMF in JAX: `python -m lmf_jax.train --emotion=sad [--data_path=...] [--workdir=...]`.

The library entry point is `train_and_evaluate(config)`; `main` only turns
flags into a Config. The protocol (epochs, early stopping, outputs) is shared
with the torch trainer in iemocap/protocol.py; this module supplies the
jitted steps.
"""

import dataclasses
import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags
from absl import logging

from flags import cli
from flags import state_dict
from flags.errors import ConfigError
from iemocap import batching
from iemocap.data import EMOTIONS
from iemocap import protocol
from iemocap import records
from iemocap import synthetic
from lmf_jax import checkpoint
from lmf_jax import device as jax_device
from lmf_jax import model as model_lib
from lmf_jax import optimizer

BACKEND = 'jax'

@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


def cross_entropy_sum(logits, labels):
  """The 2018 loss: cross-entropy summed over the batch (size_average=False)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def train_step(state, batch, rng, *, model, tx, dropouts=None):
  """One Adam step on one minibatch; pure. Dropout keys are folded from the step count.

  `dropouts` overrides the model's (audio, video, text) rates, e.g. per model in a sweep.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['audio'], batch['visual'],
        batch['text'], train=True, dropouts=dropouts, rngs={'dropout': dropout_rng},
        mutable=['batch_stats'])
    return cross_entropy_sum(logits, batch['label']), updates['batch_stats']

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
  return state, {'loss_sum': loss}


def eval_step(variables, batch, *, model):
  """(summed loss, logits) in eval mode: running BatchNorm statistics, no dropout."""
  logits = model.apply(variables, batch['audio'], batch['visual'], batch['text'], train=False)
  return cross_entropy_sum(logits, batch['label']), logits


def gather(data, index):
  return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), data)


def train_step_on(state, data, index, rng, *, model, tx):
  """train_step on the minibatch `index` of device-resident `data` (no host copy per step)."""
  return train_step(state, gather(data, index), rng, model=model, tx=tx)


def create_state(variables, tx):
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']))


def enable_compilation_cache():
  """Keeps compiled programs on disk, so a second run with the same shapes starts at once."""
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(synthetic.cache_dir(), 'jax-compilation-cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)


def device_description():
  device = jax.devices()[0]
  return f'{device.platform}:{device.device_kind}'


class JaxRun:
  """The JAX side of iemocap.protocol.Backend: state, data on device and jitted steps."""
  name = BACKEND

  def __init__(self, config, dataset, variables=None):
    """`variables` ({'params', 'batch_stats'}) replaces the seeded initialisation, e.g. with
    weights converted from torch; dropout keys still come from config.seed."""
    state_dict.check_fits_in_memory(config, dataset.input_dims)
    self.config = config
    self.model = model_lib.from_config(config)
    init_rng, self.dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    if variables is None:
      variables = model_lib.init(self.model, init_rng, dataset.input_dims,
                                 dataset.train.text.shape[1])
    self.tx = optimizer.make(config, variables['params'])
    self.state = create_state(variables, self.tx)
    self.best = jax.device_get(self.state.variables())
    self.data = {name: jax.device_put(dataset.split(name).arrays())
                 for name in ('train', 'valid', 'test')}
    self._step = jax.jit(functools.partial(train_step_on, model=self.model, tx=self.tx),
                         donate_argnums=0)
    self._eval = jax.jit(functools.partial(eval_step, model=self.model))

  def train_epoch(self, batches):
    losses = []
    for index in batches:
      self.state, step_metrics = self._step(self.state, self.data['train'], index,
                                            self.dropout_rng)
      losses.append(step_metrics['loss_sum'])
    return float(jnp.sum(jnp.stack(losses)))  # the epoch's one host sync

  def evaluate(self, split, best):
    variables = self.best if best else self.state.variables()
    loss, logits = self._eval(variables, self.data[split])
    return float(loss), np.asarray(logits)

  def keep_best(self, workdir, epoch):
    self.best = jax.device_get(self.state.variables())
    checkpoint.save(os.path.join(workdir, records.CHECKPOINT), self.best, self.config,
                    {'epoch': epoch})

  def save_progress(self, workdir, progress):
    # The best weights travel with the state: checkpoint.safetensors may be an epoch ahead of
    # `progress` if the run stopped between the two writes.
    checkpoint.save_train_state(workdir, {'state': self.state, 'best': self.best}, progress)

  def restore(self, workdir):
    trees, progress = checkpoint.load_train_state(workdir, {'state': self.state,
                                                            'best': self.best})
    self.state, self.best = trees['state'], jax.device_get(trees['best'])
    return progress

  def describe_device(self):
    return device_description()

  def time_steps(self, steps, warmup=3):
    """Seconds per train step on full-size batches, compilation and warm-up excluded."""
    n, size = self.data['train']['label'].shape[0], self.config.batch_size
    full = [b for b in batching.epoch_batches(n, size, self.config.seed, 1) if len(b) == size]
    full = full or batching.epoch_batches(n, size, self.config.seed, 1)[:1]
    for i in range(warmup):
      self.state, _ = self._step(self.state, self.data['train'], full[i % len(full)],
                                 self.dropout_rng)
    jax.block_until_ready(self.state)
    tick = time.perf_counter()
    for i in range(steps):
      self.state, _ = self._step(self.state, self.data['train'], full[i % len(full)],
                                 self.dropout_rng)
    jax.block_until_ready(self.state)
    return (time.perf_counter() - tick) / steps, len(full[0])


def train_and_evaluate(config, resume=False, on_epoch_end=None):
  """Trains (or resumes, or reports a finished run) in config.workdir; returns results.json's record."""
  dataset, is_synthetic, data_note = records.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  with records.claim_workdir(config, BACKEND, {}, resume) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return protocol.finished_record(config)
    logging.info('workdir %s, device %s, config %s', config.workdir, device_description(),
                 config.to_dict())
    run = JaxRun(config, dataset)
    return protocol.train_and_evaluate(config, run, dataset, is_synthetic, status, on_epoch_end)


def measure_performance(config, steps):
  """The seed's performance mode: step time and samples/s (FPS) after a warm-up."""
  dataset, _, data_note = records.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  run = JaxRun(config, dataset)
  step_s, batch_size = run.time_steps(steps)
  return {'backend': BACKEND, 'device': device_description(), 'emotion': config.emotion,
          **records.perf_report(batch_size, step_s, steps)}


def main_members(values):
  """--num_seeds / --sweep / --emotion=all: many models per emotion, one program per shape."""
  from flags import definitions  # pylint: disable=import-outside-toplevel  (defines flags)
  from lmf_jax import multiseed  # pylint: disable=import-outside-toplevel  (it imports this module)
  if values.resume:
    raise ConfigError('--resume continues a single run; a --num_seeds/--sweep run is restarted')
  sweeps = multiseed.parse_sweeps(values.sweep)
  emotions = EMOTIONS if values.emotion.strip().lower() == 'all' else [None]
  if values.perf_steps > 0:
    for emotion in emotions:
      config = definitions.config_from_flags(values, emotion)
      print(records.format_perf(multiseed.measure_performance(config, values.num_seeds,
                                                              values.perf_steps)))
    return
  results = []
  for emotion in emotions:
    config = definitions.config_from_flags(values, emotion)
    if emotion and values.workdir:
      config = dataclasses.replace(config, workdir=os.path.join(values.workdir, emotion))
    results.append(multiseed.train_members(config, values.num_seeds, sweeps,
                                           values.save_members))
    print(multiseed.format_members(results[-1]))
    print(f'outputs: {results[-1]["workdir"]}')
  if len(results) > 1:
    print(multiseed.emotions_table(results))


@cli.user_errors_exit
def main(argv):
  from flags import definitions  # pylint: disable=import-outside-toplevel  (defines flags)
  cli.refuse_arguments(argv)
  values = definitions.FLAGS
  cli.reuse_freed_memory()
  enable_compilation_cache()
  if values.num_seeds != 1 or values.sweep or values.emotion.strip().lower() == 'all':
    cli.StopNow().install()  # a population cannot resume yet: nothing to save first
    main_members(values)
    return
  if values.save_members:
    raise ConfigError('--save_members needs --num_seeds > 1, --sweep or --emotion=all: a single '
                      'run saves its model as checkpoint.safetensors')
  config = definitions.config_from_flags(values)
  if values.perf_steps > 0:
    print(records.format_perf(measure_performance(config, values.perf_steps)))
    return
  stop = cli.StopOnSignal().install()
  record = train_and_evaluate(config, resume=values.resume, on_epoch_end=stop.check)
  print(records.summary_table(record))
  print(f'outputs: {record["workdir"]}')


if __name__ == '__main__':
  # Only the command line defines flags: importing this module as a library defines none.
  from flags import definitions  # pylint: disable=ungrouped-imports
  from lmf_jax import options
  flags.adopt_module_key_flags(definitions)  # `--help` lists them, not only this module's (none)
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)

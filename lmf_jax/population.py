"""Many LMF models trained as one program: an engine population under `jax.vmap`, sharded.

Every state leaf gets a leading model axis; one jitted step trains all models
on their own minibatches (each model has its own init, dropout and shuffle
keys, exactly those of `--seed=<its seed>` trained alone). The model axis is
sharded over the devices given (all of jax's by default, over every process
of a `jax.distributed` run): each device trains its own models and no model
talks to another, so the program needs no communication but the read-back of
per-model losses. A population that does not fill the devices evenly is
padded with copies that never train. A stopped model's state is frozen by a
mask until the engine packs the live models into a smaller program (`pack`).
The protocol, the choice of the reported model and every output are the
engine's (engine/population.py).
"""

import math
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from engine import datasets
from engine import population as engine_population
from engine import records
from engine import state_dict
from flags.config import Config
from iemocap import batching
from iemocap.data import Dataset
from lmf_jax import checkpoint
from lmf_jax import device as jax_device
from lmf_jax import model as model_lib
from lmf_jax import optimizer
from lmf_jax import steps
from lmf_jax.device import BACKEND

DROPOUTS = ('audio_dropout', 'video_dropout', 'text_dropout')


def _member_step(state, data, index, rng, dropouts, active, *, model, tx):
  """steps.train_step for one model; a stopped model (active False) keeps its state. Models
  run one at a time skip a stopped one's step; under vmap the cond becomes a select."""

  def train(state):
    new_state, step_metrics = steps.train_step(state, steps.gather(data, index), rng, model=model,
                                               tx=tx, dropouts=dropouts)
    return new_state, step_metrics['loss_sum']

  return jax.lax.cond(active, train, lambda state: (state, jnp.zeros((), jnp.float32)), state)


def _select(mask, new, old):
  return jax.tree_util.tree_map(lambda a, b: jnp.where(mask, a, b), new, old)


def over_models(fn, devices: int, one_at_a_time: bool):
  """`fn` of one model, applied to every model of arrays whose leading axis is the (padded) model
  axis; None passes through as None.

  Side by side (vmap: one batched program, the models' matmuls fused) where the devices run
  batched work in parallel; one at a time (lax.map, a loop inside the program) on CPUs, where
  batching gains nothing and the batched step's buffers outgrow what the allocator keeps. The
  loop runs within each device's shard: the axis is split as (devices, models per device).
  """
  if not one_at_a_time:
    return jax.vmap(fn)
  if devices == 1:
    return lambda *per_model: jax.lax.map(lambda one: fn(*one), per_model)

  def apply(*per_model):
    split = lambda x: x.reshape((devices, -1) + x.shape[1:])
    merge = lambda x: x.reshape((-1,) + x.shape[2:])
    shard = lambda *args: jax.lax.map(lambda one: fn(*one), args)
    return jax.tree_util.tree_map(merge, jax.vmap(shard)(*jax.tree_util.tree_map(split,
                                                                                  per_model)))
  return apply


def to_host(x) -> np.ndarray:
  """A (possibly multi-process) array's whole value on this host."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class JaxPopulation:
  """Models of one shape trained side by side: an engine.protocol.Population under vmap,
  its model axis sharded over `devices`."""
  name = BACKEND

  def __init__(self, configs: Sequence[Config], dataset: Dataset,
               devices: Optional[Sequence[jax.Device]] = None):
    base = configs[0]
    self.devices = list(devices or jax.devices())
    state_dict.check_fits_in_memory(base, dataset.input_dims,
                                    models=math.ceil(len(configs) / len(self.devices)))
    mesh = Mesh(np.array(self.devices), ('models',))
    self.by_model = NamedSharding(mesh, PartitionSpec('models'))
    self.replicated = NamedSharding(mesh, PartitionSpec())
    self.model = model_lib.from_config(base)
    self.batch_size = base.batch_size
    self.seq_len = dataset.train.text.shape[1]
    self.input_dims = dataset.input_dims
    self.configs = list(configs)
    keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.PRNGKey(c.seed)
                                                 for c in self.padded_configs()]))
    variables = jax.vmap(lambda k: model_lib.init(self.model, k, self.input_dims, self.seq_len))(
        keys[:, 0])
    self.tx = optimizer.make(base, jax.tree_util.tree_map(lambda x: x[0], variables['params']))
    opt_state = optimizer.set_hyperparams(jax.vmap(self.tx.init)(variables['params']),
                                          self.padded_configs())
    state = steps.TrainState(step=np.zeros(len(keys), np.int32), params=variables['params'],
                             batch_stats=variables['batch_stats'], opt_state=opt_state)
    self._place(jax.device_get(state), jax.device_get(state.variables()),
                jax.device_get(keys[:, 1]))
    self.data = {name: jax.device_put(dataset.split(name).arrays(), self.replicated)
                 for name in ('train', 'valid', 'test')}
    self.one_at_a_time = self.devices[0].platform == 'cpu'
    self._eval = jax.jit(lambda variables, data: over_models(
        lambda v: steps.eval_step(v, data, model=self.model), len(self.devices),
        self.one_at_a_time)(variables))
    self._keep_best = jax.jit(jax.vmap(_select))

  @property
  def granule(self) -> int:
    """Models per program step come in multiples of this (one slot per device)."""
    return len(self.devices)

  def padded_configs(self):
    """The configs, then copies of the last that never train, to fill every device evenly."""
    return self.configs + [self.configs[-1]] * (-len(self.configs) % len(self.devices))

  def _pad(self, per_model):
    per_model = np.asarray(per_model)
    pad = -len(per_model) % len(self.devices)
    return np.concatenate([per_model, np.zeros((pad,) + per_model.shape[1:], per_model.dtype)])

  def _place(self, state, best, dropout_keys):
    """Puts host trees with a (padded) leading model axis on the devices, and builds the step
    for this population's size and dropout rates."""
    put = lambda tree: jax.device_put(tree, self.by_model)
    self.state, self.best, self.dropout_keys = put(state), put(best), put(dropout_keys)
    # Swept dropout rates travel as traced values; otherwise the static rates are used, which
    # is exactly the single-model program.
    rates = np.asarray([[getattr(c, d) for d in DROPOUTS] for c in self.padded_configs()],
                       np.float32)
    self.dropouts = put(rates) if (rates != rates[0]).any() else None

    def step(state, data, index, rng, dropouts, active):
      one = lambda s, i, r, d, a: _member_step(s, data, i, r, d, a, model=self.model, tx=self.tx)
      return over_models(one, len(self.devices), self.one_at_a_time)(state, index, rng, dropouts,
                                                                      active)
    self._step = jax.jit(step, donate_argnums=0)

  def _host_trees(self):
    """(state, best) on the host, without the padding."""
    size = len(self.configs)
    cut = lambda tree: jax.tree_util.tree_map(lambda x: to_host(x)[:size], tree)
    return cut(self.state), cut(self.best)

  def train_epoch(self, epoch, active):
    """Summed train loss per model (zero for stopped ones); one host sync."""
    n = self.data['train']['label'].shape[0]
    orders = [batching.epoch_batches(n, self.batch_size, c.seed, epoch)
              for c in self.padded_configs()]
    active = jax.device_put(self._pad(np.asarray(active, bool)), self.by_model)
    losses = []
    for step in range(len(orders[0])):
      index = jax.device_put(np.stack([order[step] for order in orders]), self.by_model)
      self.state, loss = self._step(self.state, self.data['train'], index, self.dropout_keys,
                                    self.dropouts, active)
      losses.append(loss)
    return to_host(jnp.sum(jnp.stack(losses), axis=0))[:len(self.configs)]

  def evaluate(self, split, best):
    loss, logits = self._eval(self.best if best else self.state.variables(), self.data[split])
    size = len(self.configs)
    return to_host(loss)[:size], to_host(logits)[:size]

  def keep_best(self, improved):
    if np.any(improved):
      mask = jax.device_put(self._pad(np.asarray(improved, bool)), self.by_model)
      self.best = self._keep_best(mask, self.state.variables(), self.best)

  def best_state_dicts(self, indices):
    best = jax.tree_util.tree_map(to_host, self.best)
    return [checkpoint.to_state_dict(jax.tree_util.tree_map(lambda x: x[k], best),
                                     self.configs[k]) for k in indices]

  def train_state(self):
    state, best = self._host_trees()
    return checkpoint.flatten_trees({'state': state, 'best': best}), {}

  def load_train_state(self, arrays, progress, path):
    state, best = self._host_trees()
    trees = checkpoint.unflatten_trees({'state': state, 'best': best}, arrays, path)
    pad = lambda tree: jax.tree_util.tree_map(self._pad, jax.device_get(tree))
    self._place(pad(trees['state']), pad(trees['best']), to_host(self.dropout_keys))

  def pack(self, keep: np.ndarray) -> None:
    """Keeps only the models marked in `keep`, in order: the next step compiles for fewer."""
    index = np.flatnonzero(keep)
    state, best = self._host_trees()
    keys = to_host(self.dropout_keys)[index]
    self.configs = [self.configs[k] for k in index]
    take = lambda tree: jax.tree_util.tree_map(lambda x: self._pad(x[index]), tree)
    self._place(take(state), take(best), self._pad(keys))

  def describe_device(self):
    return jax_device.run_device(self.devices)

  def time_steps(self, count, warmup=2):
    """Seconds per vmapped train step on full-size batches (compilation excluded)."""
    n = self.data['train']['label'].shape[0]
    orders = [[b for b in batching.epoch_batches(n, self.batch_size, c.seed, 1)
               if len(b) == self.batch_size] or batching.epoch_batches(n, self.batch_size, c.seed, 1)
              for c in self.padded_configs()]
    active = jax.device_put(self._pad(np.ones(len(self.configs), bool)), self.by_model)
    indices = [jax.device_put(np.stack([o[i % len(o)] for o in orders]), self.by_model)
               for i in range(min(len(orders[0]), count + warmup))]
    run = lambda i: self._step(self.state, self.data['train'], indices[i % len(indices)],
                               self.dropout_keys, self.dropouts, active)[0]
    for i in range(warmup):
      self.state = run(i)
    jax.block_until_ready(self.state)
    tick = time.perf_counter()
    for i in range(count):
      self.state = run(i)
    jax.block_until_ready(self.state)
    return (time.perf_counter() - tick) / count, len(orders[0][0])


def measure_performance(config: Config, num_seeds: int, count: int,
                        devices: Optional[Sequence[jax.Device]] = None) -> dict:
  """Model-samples/s of one vmapped step over `num_seeds` models (compilation excluded)."""
  dataset, _, data_note = datasets.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  population = JaxPopulation(engine_population.member_configs(config, num_seeds), dataset,
                             devices)
  step_s, batch_size = population.time_steps(count)
  report = records.perf_report(batch_size * num_seeds, step_s, count)
  return {'backend': BACKEND, 'device': population.describe_device(),
          'emotion': config.emotion, 'num_models': num_seeds, **report}

"""Train LMF in JAX: `python -m lmf_jax.train --emotion=sad [--data_path=...] [--workdir=...]`,
or a population: `--num_seeds=N`, `--sweep=name=v1,v2`, `--emotion=all`.

The library entry points are `train_and_evaluate(config)` (one model) and
`train_population(config, num_seeds, sweeps)`; `main` only turns flags into a
Config. The protocol (epochs, early stopping, resuming, outputs) is the
engine's (engine/protocol.py, engine/population.py), shared with the torch
trainer; this module and lmf_jax/population.py supply the jitted programs.
"""

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

from engine import cli
from engine import datasets
from engine import population as engine_population
from engine import protocol
from engine import ray_trials
from engine import records
from engine import state_dict
from engine import trials
from engine import workdirs
from engine.errors import NoModel
from flags import definitions
from flags.config import Config
from flags.errors import ConfigError
from iemocap import batching
from iemocap import synthetic
from iemocap.data import Dataset
from lmf_jax import checkpoint
from lmf_jax import device as jax_device
from lmf_jax.device import BACKEND
from lmf_jax import model as model_lib
from lmf_jax import optimizer
from lmf_jax import options
from lmf_jax import population
from lmf_jax import steps

def enable_compilation_cache():
  """Keeps compiled programs on disk, so a second run with the same shapes starts at once."""
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(synthetic.cache_dir(), 'jax-compilation-cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)


class JaxRun:
  """One model as an engine.protocol.Population of one: state, data on device, jitted steps.

  The steps are the plain (unvmapped) programs, so a single run is what it always was.
  """
  name = BACKEND
  granule = 1  # one model, unpadded

  def __init__(self, config: Config, dataset: Dataset, variables: Optional[dict] = None):
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
    self.state = steps.create_state(variables, self.tx)
    self.best = jax.device_get(self.state.variables())
    self.data = {name: jax.device_put(dataset.split(name).arrays())
                 for name in ('train', 'valid', 'test')}
    self._step = jax.jit(functools.partial(steps.train_step_on, model=self.model, tx=self.tx),
                         donate_argnums=0)
    self._eval = jax.jit(functools.partial(steps.eval_step, model=self.model))

  def batches(self, epoch: int) -> list:
    """Epoch `epoch`'s minibatch index arrays (iemocap.batching: from seed and epoch alone)."""
    n = self.data['train']['label'].shape[0]
    return batching.epoch_batches(n, self.config.batch_size, self.config.seed, epoch)

  def train_on(self, index: np.ndarray) -> jax.Array:
    """One Adam step on the train rows `index`; returns its summed loss, still on the device."""
    self.state, step_metrics = self._step(self.state, self.data['train'], index,
                                          self.dropout_rng)
    return step_metrics['loss_sum']

  def train_epoch(self, epoch, active):
    if not active[0]:
      return np.zeros(1)
    losses = [self.train_on(index) for index in self.batches(epoch)]
    return np.array([float(jnp.sum(jnp.stack(losses)))])  # the epoch's one host sync

  def evaluate(self, split, best):
    variables = self.best if best else self.state.variables()
    loss, logits = self._eval(variables, self.data[split])
    return np.array([float(loss)]), np.asarray(logits)[None]

  def keep_best(self, improved):
    if improved[0]:
      self.best = jax.device_get(self.state.variables())

  def best_state_dicts(self, indices):
    return [checkpoint.to_state_dict(self.best, self.config) for _ in indices]

  def variables(self) -> dict:
    """The current weights and BatchNorm statistics, on the host."""
    return jax.device_get(self.state.variables())

  def train_state(self):
    return checkpoint.flatten_trees({'state': self.state, 'best': self.best}), {}

  def load_train_state(self, arrays, progress, path):
    trees = checkpoint.unflatten_trees({'state': self.state, 'best': self.best}, arrays, path)
    self.state, self.best = trees['state'], jax.device_get(trees['best'])

  def describe_device(self):
    return jax_device.run_device()

  def time_steps(self, count, warmup=3):
    """Seconds per train step on full-size batches, compilation and warm-up excluded."""
    size = self.config.batch_size
    full = [b for b in self.batches(1) if len(b) == size] or self.batches(1)[:1]
    for i in range(warmup):
      self.train_on(full[i % len(full)])
    jax.block_until_ready(self.state)
    tick = time.perf_counter()
    for i in range(count):
      self.train_on(full[i % len(full)])
    jax.block_until_ready(self.state)
    return (time.perf_counter() - tick) / count, len(full[0])


def train_and_evaluate(config: Config, resume: bool = False,
                       on_epoch_end: Optional[protocol.OnEpochEnd] = None) -> dict:
  """Trains (or resumes, or reports a finished run) in config.workdir; returns results.json's record."""
  dataset, is_synthetic, data_note = datasets.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  with workdirs.claim_workdir(config, BACKEND, {}, resume) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return protocol.finished_record(config)
    logging.info('workdir %s, device %s, config %s', config.workdir, jax_device.run_device(),
                 config.to_dict())
    run = JaxRun(config, dataset)
    return protocol.train_and_evaluate(config, run, dataset, is_synthetic, status, on_epoch_end)


def population_options(num_seeds: int, sweeps: Sequence) -> dict:
  """What besides the Config makes a population's identity (its workdir fingerprint)."""
  return {'num_seeds': num_seeds, 'sweep': [[n, v] for n, v in sweeps]}


def train_population(config: Config, num_seeds: int = 1, sweeps: Sequence = (),
                     save_members: bool = False, resume: bool = False,
                     on_epoch_end: Optional[protocol.OnEpochEnd] = None,
                     devices: Optional[Sequence[jax.Device]] = None) -> dict:
  """Trains (or resumes, or reports) seeds x settings of one emotion in config.workdir, vmapped
  in one program per shape and sharded over `devices` (all of jax's by default); returns
  results.json's record.

  In a multi-process run every process calls this alike; process 0 owns the workdir, the
  others train their share with a private scratch directory and read the workdir only (to
  resume, it must be on a file system they all see).
  """
  dataset, is_synthetic, data_note = datasets.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  members = engine_population.member_configs(config, num_seeds, sweeps)  # refused before a claim
  options_record = population_options(num_seeds, sweeps)
  devices = list(devices or jax.devices())
  make = lambda configs: population.JaxPopulation(configs, dataset, devices)
  if jax.process_index() > 0:
    return _train_population_elsewhere(config, num_seeds, sweeps, options_record, make, dataset,
                                       is_synthetic, resume, on_epoch_end)
  with workdirs.claim_workdir(config, BACKEND, options_record, resume) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return protocol.finished_record(config)
    members = engine_population.member_configs(config, num_seeds, sweeps)
    return engine_population.train_population(config, members, make, dataset, is_synthetic,
                                              status, save_members, on_epoch_end)


def run_pack(trial: trials.Trial, on_epoch_end: Optional[protocol.OnEpochEnd] = None):
  """A pack of a population sent to a Ray worker (engine.trials): its members as one population
  sharded over the worker's devices, continued when its workdir holds one; returns why it kept
  no model, if it kept none."""
  cli.reuse_freed_memory()  # a Ray worker's first pack: its process never ran a command line
  enable_compilation_cache()
  dataset, is_synthetic, _ = datasets.open_dataset(trial.config)
  identity = {'pack': [[c.seed, c.hparams()] for c in trial.configs]}
  make = lambda configs: population.JaxPopulation(configs, dataset, jax.devices())
  with workdirs.claim_workdir(trial.config, BACKEND, identity,
                              workdirs.holds_run(trial.config, BACKEND, identity)) as (config,
                                                                                     status):
    if status == 'complete':
      return None
    try:
      engine_population.train_population(config, list(trial.configs), make, dataset,
                                         is_synthetic, status, True, on_epoch_end)
    except NoModel as e:
      return str(e)
  return None


@contextlib.contextmanager
def pack_scheduler(ray_address: str, models: int, models_per_pack: int = 0,
                   devices_per_pack: int = 0, cpus_per_pack: int = 0):
  """(Ray scheduler, models per pack) for the block: each pack a Ray task on `devices_per_pack`
  GPUs (default 1) where the cluster has GPUs, else on `cpus_per_pack` cores (default 1); by
  default the population is split so that the cluster runs every pack at once."""
  for name, value in (('models_per_pack', models_per_pack), ('devices', devices_per_pack),
                      ('cpus_per_trial', cpus_per_pack)):
    if value < 0:
      raise ConfigError(f'--{name}={value} must be >= 0 (0: the default)')
  with ray_trials.connect(ray_address) as resources:
    cpus = cpus_per_pack or 1
    options, slots = {'num_cpus': cpus}, int(resources.get('CPU', 0) // cpus)
    if resources.get('GPU'):
      options['num_gpus'] = devices_per_pack or 1
      slots = min(slots, int(resources['GPU'] // options['num_gpus']))
    slots = max(slots, 1)
    yield (ray_trials.RayScheduler(options, slots),
           models_per_pack or trials.packs_for(models, slots))


def train_population_on_ray(config: Config, scheduler: trials.Scheduler, models_per_pack: int,
                            num_seeds: int = 1, sweeps: Sequence = (),
                            save_members: bool = False, resume: bool = False,
                            on_epoch_end: Optional[protocol.OnEpochEnd] = None) -> dict:
  """train_population split into packs of `models_per_pack` members of one shape, each sent
  by `scheduler` (pack_scheduler) to a Ray worker; returns results.json's record."""
  dataset, is_synthetic, data_note = datasets.open_dataset(config)  # cached before any worker
  logging.info(data_note)
  engine_population.member_configs(config, num_seeds, sweeps)  # refused before a claim
  options_record = pack_options(num_seeds, sweeps, models_per_pack)
  with workdirs.claim_workdir(config, BACKEND, options_record, resume) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return protocol.finished_record(config)
    members = engine_population.member_configs(config, num_seeds, sweeps)
    return trials.train_trials(config, members, scheduler, run_pack, dataset, is_synthetic,
                               BACKEND, save_members, models_per_pack, on_epoch_end)


def pack_options(num_seeds: int, sweeps: Sequence, models_per_pack: int) -> dict:
  """A population in packs is its own run (its files are the packs'): the size is part of it."""
  return {**population_options(num_seeds, sweeps), 'models_per_pack': models_per_pack}


def _train_population_elsewhere(config, num_seeds, sweeps, options_record, make, dataset,
                                is_synthetic, resume, on_epoch_end):
  """train_population in a process other than 0: the same program, written to scratch."""
  config, status = workdirs.prepare_workdir(config, BACKEND, options_record, resume, write=False)
  if status == 'complete':
    return protocol.finished_record(config)
  with tempfile.TemporaryDirectory(prefix=f'lmf-process{jax.process_index()}-') as scratch:
    if status == 'resume':
      for name in (records.TRAIN_STATE, records.METRICS_JSONL):
        if os.path.exists(os.path.join(config.workdir, name)):
          shutil.copy(os.path.join(config.workdir, name), scratch)
    local = dataclasses.replace(config, workdir=scratch)
    members = engine_population.member_configs(local, num_seeds, sweeps)
    record = engine_population.train_population(local, members, make, dataset, is_synthetic,
                                                status, False, on_epoch_end)
  return {**record, 'workdir': os.path.abspath(config.workdir)}


def measure_performance(config: Config, count: int) -> dict:
  """The seed's performance mode: step time and samples/s (FPS) after a warm-up."""
  dataset, _, data_note = datasets.open_dataset(config)
  logging.info(data_note)
  jax_device.log_devices()
  run = JaxRun(config, dataset)
  step_s, batch_size = run.time_steps(count)
  return {'backend': BACKEND, 'device': jax_device.run_device(), 'emotion': config.emotion,
          **records.perf_report(batch_size, step_s, count)}


def main_members(values, stop):
  """--num_seeds / --sweep / --emotion=all: many models per emotion, one program per shape."""
  sweeps = engine_population.parse_sweeps(values.sweep)
  on_ray = values.ray_address not in ('', 'none')
  if on_ray and (values.perf_steps > 0 or jax.process_count() > 1):
    raise ConfigError('--ray_address sends packs to Ray workers from one process: drop '
                      '--perf_steps and the jax.distributed flags')
  devices = [] if on_ray else jax_device.population_devices(values.devices)
  configs = definitions.population_configs(values)
  if values.perf_steps > 0:
    for config in configs:
      print(records.format_perf(population.measure_performance(config, values.num_seeds,
                                                               values.perf_steps, devices)))
    return
  if on_ray:
    main_packs(values, configs, sweeps, stop)
    return
  options_record = population_options(values.num_seeds, sweeps)
  resumes = [values.resume and workdirs.holds_run(c, BACKEND, options_record) for c in configs]
  if values.resume and not any(resumes):
    raise ConfigError('--resume: no workdir of this command holds a run to continue')
  results = []
  for config, resume in zip(configs, resumes):
    results.append(train_population(config, values.num_seeds, sweeps, values.save_members,
                                    resume, stop.check, devices))
    if jax.process_index() == 0:
      print(engine_population.format_members(results[-1]))
      print(f'outputs: {results[-1]["workdir"]}')
  if len(results) > 1 and jax.process_index() == 0:
    print(engine_population.emotions_table(results))


def main_packs(values, configs, sweeps, stop):
  """main_members with --ray_address: each emotion's population in packs on Ray."""
  models = len(engine_population.member_configs(configs[0], values.num_seeds, sweeps))
  with pack_scheduler(values.ray_address, models, values.models_per_pack, values.devices,
                      values.cpus_per_trial) as (scheduler, size):
    options_record = pack_options(values.num_seeds, sweeps, size)
    resumes = [values.resume and workdirs.holds_run(c, BACKEND, options_record) for c in configs]
    if values.resume and not any(resumes):
      raise ConfigError('--resume: no workdir of this command holds a run to continue')
    results = []
    for config, resume in zip(configs, resumes):
      results.append(train_population_on_ray(config, scheduler, size, values.num_seeds, sweeps,
                                             values.save_members, resume, stop.check))
      print(engine_population.format_members(results[-1]))
      print(f'outputs: {results[-1]["workdir"]}')
  if len(results) > 1:
    print(engine_population.emotions_table(results))


@cli.user_errors_exit
def main(argv):
  cli.refuse_arguments(argv)
  values = definitions.FLAGS
  cli.reuse_freed_memory()
  enable_compilation_cache()
  distributed = jax_device.initialize_distributed(values.coordinator_address,
                                                  values.num_processes, values.process_id)
  if values.num_seeds != 1 or values.sweep or values.emotion.strip().lower() == 'all':
    main_members(values, cli.StopOnSignal().install())
    return
  if distributed or values.devices:
    raise ConfigError('--devices and several processes shard a population: give --num_seeds, '
                      '--sweep or --emotion=all (a single run trains on one device)')
  for name in ('ray_address', 'cpus_per_trial', 'models_per_pack'):
    if values[name].present:
      raise ConfigError(f'--{name} is for a population: give --num_seeds > 1, --sweep or '
                        '--emotion=all')
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
  definitions.define_training_flags()
  definitions.define_population_flags()
  options.define_flags()
  flags.adopt_module_key_flags(definitions)  # `--help` lists them, not only this module's (none)
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)

"""Train LMF in PyTorch: `python -m lmf_torch_npu.train --emotion=sad [--device=auto] [--amp=auto]`,
or a population: `--num_seeds=N`, `--sweep=name=v1,v2`, `--emotion=all`, its trials on Ray.

The library entry points are `train_and_evaluate(config, options)` (one model)
and `train_population(config, num_seeds, sweeps, ...)`; `main` only turns flags
into a Config and TorchOptions. The protocol (epochs, early stopping, outputs)
is shared with the JAX trainer in engine/; this module supplies the torch
steps, on an Ascend NPU, a CUDA GPU or the CPU. torch cannot batch models
(torch.vmap does not take nn.LSTM), so a population is separate trials, one per
member, each the lone run of its seed (engine/trials.py), side by side on Ray.
"""

import contextlib
import dataclasses
import functools
import time
from typing import Optional, Sequence

import numpy as np
import torch
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
from engine.errors import NoModel, RunError
from flags import definitions
from flags import hardware
from flags.config import Config
from flags.errors import ConfigError
from iemocap import batching
from iemocap.data import Dataset
from lmf_torch_npu import checkpoint
from lmf_torch_npu import device as device_lib
from lmf_torch_npu import model as model_lib
from lmf_torch_npu import optimizer
from lmf_torch_npu import options
from lmf_torch_npu import steps

BACKEND = 'torch'


def resolve(torch_options):
  """(DeviceChoice, Precision) of the options, logged; fails with one line if unavailable."""
  choice = device_lib.select_device(torch_options.device)
  precision = device_lib.select_precision(choice, torch_options.amp, torch_options.loss_scale,
                                          torch_options.amp_backend)
  logging.info('torch %s on %s (%s); precision %s', torch.__version__, choice.name, choice.why,
               precision)
  if torch_options.device == 'auto':  # a CPU asked for is no mistake
    warning = hardware.unused_accelerator_warning('torch', choice.kind)
    if warning:
      logging.warning(warning)
  return choice, precision


def backend_options(choice, precision):
  """What besides the Config shapes a torch run's result (the workdir fingerprint includes it)."""
  return {'device': choice.kind, **precision.options()}


class TorchRun:
  """One model as an engine.protocol.Population of one: model, optimiser, data on the device."""
  name = BACKEND
  granule = 1  # one model, unpadded

  def __init__(self, config: Config, dataset: Dataset, choice: device_lib.DeviceChoice,
               precision: device_lib.Precision, state: Optional[dict] = None):
    """`state` (a 2018 state_dict of tensors) replaces the seeded initialisation, e.g. to start
    from the same weights as another run; the dropout seeds still come from config.seed."""
    state_dict.check_fits_in_memory(config, dataset.input_dims)
    self.config, self.choice, self.precision = config, choice, precision
    device_lib.activate(choice)
    self.device = choice.torch_device()
    self.input_dims = dataset.input_dims
    torch.manual_seed(config.seed)  # the initialisation's draws
    model = model_lib.from_config(config, self.input_dims)
    if state is not None:  # in the dtype of its weights (parity runs float64 too)
      model.to(next(v.dtype for v in state.values() if v.is_floating_point()))
      model.load_state_dict(state)
    model = model.to(self.device)
    tx = optimizer.make(config, model, choice.kind)
    self.model, self.tx, self.amp = device_lib.prepare(choice, precision, model, tx)
    self.best = self._snapshot()
    self.data = {name: steps.to_device(dataset.split(name).arrays(), self.device)
                 for name in ('train', 'valid', 'test')}

  def _snapshot(self):
    return {key: value.detach().clone() for key, value in self.model.state_dict().items()}

  def batches(self, epoch: int) -> list:
    """Epoch `epoch`'s minibatch index arrays (iemocap.batching: from seed and epoch alone)."""
    n = self.data['train']['label'].shape[0]
    return batching.epoch_batches(n, self.config.batch_size, self.config.seed, epoch)

  def _device_batches(self, batches):
    """The epoch's index arrays as views of one tensor copied to the device once."""
    order = torch.from_numpy(np.concatenate(batches)).to(self.device)
    return order.split([len(b) for b in batches])

  def train_on(self, index: torch.Tensor) -> torch.Tensor:
    """One Adam step on the train rows `index` (a device tensor); its summed loss, on the device."""
    self.model.train()
    return steps.train_step(self.model, self.tx, steps.gather(self.data['train'], index),
                            self.amp)

  def train_epoch(self, epoch, active):
    if not active[0]:
      return np.zeros(1)
    torch.manual_seed(steps.dropout_seed(self.config.seed, epoch))
    total = 0
    for index in self._device_batches(self.batches(epoch)):
      total = total + self.train_on(index)  # stays on the device
    return np.array([float(total)])  # the epoch's one host sync

  def evaluate(self, split, best):
    model = self.model
    if best:
      dtype = next(self.model.parameters()).dtype
      model = model_lib.from_config(self.config, self.input_dims).to(self.device, dtype)
      model.load_state_dict(self.best)
    loss, logits = steps.eval_step(model, self.data[split])
    return np.array([loss.item()]), logits.cpu().numpy()[None]  # one host sync per evaluation

  def keep_best(self, improved):
    if improved[0]:
      self.best = self._snapshot()

  def best_state_dicts(self, indices):
    return [checkpoint.to_state_dict(self.best, self.config) for _ in indices]  # a host copy

  def train_state(self):
    trees = {'model': self.model.state_dict(),
             'optimizer': checkpoint.optimizer_tensors(self.tx), 'best': self.best}
    return checkpoint.flatten_tensors(trees), {'loss_scaler': self.amp.state_dict()}

  def load_train_state(self, arrays, progress, path):
    if self.precision.backend == 'apex':
      raise RunError('--resume is not supported with --amp_backend=apex (its master weights '
                     'are not saved): start the run again, or train with native AMP')
    shapes = {'model': {k: tuple(v.shape) for k, v in self.model.state_dict().items()},
              'optimizer': checkpoint.optimizer_shapes(self.tx),
              'best': {k: tuple(v.shape) for k, v in self.best.items()}}
    trees = checkpoint.unflatten_tensors(shapes, arrays, path)
    self.model.load_state_dict(trees['model'])
    checkpoint.load_optimizer_tensors(self.tx, trees['optimizer'])
    self.amp.load_state_dict(progress.get('loss_scaler'))
    self.best = {k: v.to(device=self.device, dtype=self.best[k].dtype)
                 for k, v in trees['best'].items()}

  def describe_device(self):
    return f'{device_lib.describe(self.choice)}, {self.precision}'

  def time_steps(self, count, warmup=3):
    """Seconds per train step on full-size batches, warm-up excluded."""
    size = self.config.batch_size
    full = [b for b in self.batches(1) if len(b) == size] or self.batches(1)[:1]
    index = self._device_batches(full)
    for i in range(warmup):
      self.train_on(index[i % len(index)])
    device_lib.synchronize(self.choice)
    tick = time.perf_counter()
    for i in range(count):
      self.train_on(index[i % len(index)])
    device_lib.synchronize(self.choice)
    return (time.perf_counter() - tick) / count, len(full[0])


def train_and_evaluate(config, torch_options=device_lib.TorchOptions(), resume=False,
                       on_epoch_end=None):
  """Trains (or resumes, or reports a finished run) in config.workdir; returns results.json's record."""
  dataset, is_synthetic, data_note = datasets.open_dataset(config)
  logging.info(data_note)
  choice, precision = resolve(torch_options)
  with workdirs.claim_workdir(config, BACKEND, backend_options(choice, precision),
                             resume) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return protocol.finished_record(config)
    logging.info('workdir %s, config %s', config.workdir, config.to_dict())
    run = TorchRun(config, dataset, choice, precision)
    return protocol.train_and_evaluate(config, run, dataset, is_synthetic, status, on_epoch_end)


def run_trial(trial: trials.Trial, torch_options: device_lib.TorchOptions, threads: int,
              on_epoch_end: Optional[protocol.OnEpochEnd] = None) -> Optional[str]:
  """One trial of a population (engine.trials): the lone run of its member, continued when its
  workdir holds one; returns why it kept no model, if it kept none. On the CPU torch's float32
  results depend on its thread count: `threads` (0: torch's default) fixes it."""
  if threads:
    torch.set_num_threads(threads)
  cli.reuse_freed_memory()  # a Ray worker's first trial: its process never ran a command line
  config = trial.config
  try:
    train_and_evaluate(config, torch_options, resume=workdirs.holds_run(config, BACKEND, {}),
                       on_epoch_end=on_epoch_end)
  except NoModel as e:
    return str(e)
  return None


@dataclasses.dataclass(frozen=True)
class Trials:
  """Where a population's trials run: the scheduler, and what each trial is given."""
  scheduler: trials.Scheduler
  kind: str  # the trials' device kind: npu | cuda | cpu
  torch_options: device_lib.TorchOptions  # as each trial resolves them (Ray: its one device)
  threads: int  # torch's CPU threads in each trial (0: torch's default)
  requested: device_lib.TorchOptions  # as asked for (part of the workdir fingerprint)

  def options_record(self, num_seeds: int, sweeps: Sequence) -> dict:
    """What besides the Config makes a population's identity (its workdir fingerprint): the
    trials' device and, on the CPU, their thread count (float32 results depend on it)."""
    return {'num_seeds': num_seeds, 'sweep': [[n, v] for n, v in sweeps], 'device': self.kind,
            'amp': self.requested.amp, 'loss_scale': self.requested.loss_scale,
            'amp_backend': self.requested.amp_backend,
            'cpu_threads': self.threads if self.kind == 'cpu' else 0}


@contextlib.contextmanager
def trial_scheduler(ray_address: str = '',
                    torch_options: device_lib.TorchOptions = device_lib.TorchOptions(),
                    cpus_per_trial: int = 0):
  """Trials for the block: on Ray (started here, or the cluster at `ray_address`) one NPU or
  GPU per trial, or `cpus_per_trial` cores on the CPU, with that device the worker's only
  visible one; with 'none' (or no Ray installed and no address) here, one after another."""
  if cpus_per_trial < 0:
    raise ConfigError(f'--cpus_per_trial={cpus_per_trial} must be >= 0 (0: the default)')
  kind, index = device_lib.parse_device(torch_options.device)
  if ray_address == 'none' or (not ray_address and not ray_trials.available()):
    if ray_address != 'none':
      logging.warning('Ray is not installed: the trials run one after another in this process '
                      '(%s to run them side by side)', ray_trials.INSTALL)
    choice = device_lib.select_device(torch_options.device)
    threads = cpus_per_trial or (torch.get_num_threads() if choice.kind == 'cpu' else 0)
    yield Trials(trials.InProcess(), choice.kind, torch_options, threads, torch_options)
    return
  if index is not None:
    raise ConfigError(f'--device={torch_options.device}: Ray gives each trial its device; pass '
                      f'--device={kind}')
  with ray_trials.connect(ray_address) as resources:
    if kind == 'auto':
      kind = 'npu' if resources.get('NPU') else 'cuda' if resources.get('GPU') else 'cpu'
    cpus = cpus_per_trial or 1
    options, unit = {'num_cpus': cpus}, {'npu': 'NPU', 'cuda': 'GPU'}.get(kind)
    if unit and not resources.get(unit):
      raise ConfigError(f'--device={kind}: the Ray cluster has no {unit} (it has '
                        f'{", ".join(k for k in ("CPU", "GPU", "NPU") if resources.get(k))})')
    if kind == 'npu':
      options['resources'] = {'NPU': 1}
    elif kind == 'cuda':
      options['num_gpus'] = 1
    slots = int(resources.get('CPU', 0) // cpus)
    if unit:
      slots = min(slots, int(resources[unit]))
    device = 'cpu' if kind == 'cpu' else f'{kind}:0'  # the one device Ray left visible
    yield Trials(ray_trials.RayScheduler(options, max(slots, 1)), kind,
                 dataclasses.replace(torch_options, device=device), cpus if kind == 'cpu' else 0,
                 torch_options)


def train_population(config: Config, setup: Trials, num_seeds: int = 1, sweeps: Sequence = (),
                     save_members: bool = False, resume: bool = False,
                     on_epoch_end: Optional[protocol.OnEpochEnd] = None) -> dict:
  """Trains (or resumes, or reports) seeds x settings of one emotion in config.workdir, one
  trial per member where `setup` (from trial_scheduler) runs them; returns results.json's
  record."""
  dataset, is_synthetic, data_note = datasets.open_dataset(config)  # cached before any worker
  logging.info(data_note)
  engine_population.member_configs(config, num_seeds, sweeps)  # refused before a claim
  with workdirs.claim_workdir(config, BACKEND, setup.options_record(num_seeds, sweeps),
                              resume) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return protocol.finished_record(config)
    members = engine_population.member_configs(config, num_seeds, sweeps)
    run = functools.partial(run_trial, torch_options=setup.torch_options, threads=setup.threads)
    return trials.train_trials(config, members, setup.scheduler, run, dataset, is_synthetic,
                               BACKEND, save_members, on_epoch_end=on_epoch_end)


def measure_performance(config, torch_options, count):
  """The seed's performance mode: step time and samples/s (FPS) after a warm-up."""
  dataset, _, data_note = datasets.open_dataset(config)
  logging.info(data_note)
  run = TorchRun(config, dataset, *resolve(torch_options))
  step_s, batch_size = run.time_steps(count)
  return {'backend': BACKEND, 'device': run.describe_device(), 'emotion': config.emotion,
          **records.perf_report(batch_size, step_s, count)}


def main_members(values, torch_options, stop):
  """--num_seeds / --sweep / --emotion=all: a population of trials per emotion."""
  sweeps = engine_population.parse_sweeps(values.sweep)
  if values.perf_steps > 0:
    raise ConfigError('--perf_steps times one model\'s steps: drop --num_seeds/--sweep and give '
                      'one --emotion')
  configs = definitions.population_configs(values)
  with trial_scheduler(values.ray_address, torch_options, values.cpus_per_trial) as setup:
    options_record = setup.options_record(values.num_seeds, sweeps)
    resumes = [values.resume and workdirs.holds_run(c, BACKEND, options_record) for c in configs]
    if values.resume and not any(resumes):
      raise ConfigError('--resume: no workdir of this command holds a run to continue')
    results = []
    for config, resume in zip(configs, resumes):
      results.append(train_population(config, setup, values.num_seeds, sweeps,
                                      values.save_members, resume, stop.check))
      print(engine_population.format_members(results[-1]))
      print(f'outputs: {results[-1]["workdir"]}')
  if len(results) > 1:
    print(engine_population.emotions_table(results))


@cli.user_errors_exit
def main(argv):
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  values = definitions.FLAGS
  torch_options = options.options_from_flags()
  if values.num_seeds != 1 or values.sweep or values.emotion.strip().lower() == 'all':
    main_members(values, torch_options, cli.StopOnSignal().install())
    return
  for name in ('ray_address', 'cpus_per_trial', 'save_members'):
    if values[name].present:
      raise ConfigError(f'--{name} is for a population: give --num_seeds > 1, --sweep or '
                        '--emotion=all (a single run trains here, on --device)')
  config = definitions.config_from_flags()
  if definitions.FLAGS.perf_steps > 0:
    print(records.format_perf(measure_performance(config, torch_options,
                                                  definitions.FLAGS.perf_steps)))
    return
  stop = cli.StopOnSignal().install()
  record = train_and_evaluate(config, torch_options, resume=definitions.FLAGS.resume,
                              on_epoch_end=stop.check)
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

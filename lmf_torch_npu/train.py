"""Train LMF in PyTorch: `python -m lmf_torch_npu.train --emotion=sad [--device=auto] [--amp=auto]`.

The library entry point is `train_and_evaluate(config, options)`; `main` only
turns flags into a Config and TorchOptions. The protocol (epochs, early
stopping, outputs) is shared with the JAX trainer in engine/protocol.py; this
module supplies the torch steps, on an Ascend NPU, a CUDA GPU or the CPU.
"""

import time
from typing import Optional

import numpy as np
import torch
from absl import app
from absl import flags
from absl import logging

from engine import cli
from engine import datasets
from engine import protocol
from engine import records
from engine import state_dict
from engine import workdirs
from engine.errors import RunError
from flags import definitions
from flags import hardware
from flags.config import Config
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


def measure_performance(config, torch_options, count):
  """The seed's performance mode: step time and samples/s (FPS) after a warm-up."""
  dataset, _, data_note = datasets.open_dataset(config)
  logging.info(data_note)
  run = TorchRun(config, dataset, *resolve(torch_options))
  step_s, batch_size = run.time_steps(count)
  return {'backend': BACKEND, 'device': run.describe_device(), 'emotion': config.emotion,
          **records.perf_report(batch_size, step_s, count)}


@cli.user_errors_exit
def main(argv):
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  config = definitions.config_from_flags()
  torch_options = options.options_from_flags()
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
  options.define_flags()
  flags.adopt_module_key_flags(definitions)  # `--help` lists them, not only this module's (none)
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)

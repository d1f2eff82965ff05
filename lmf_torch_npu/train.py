"""Train LMF in PyTorch: `python -m lmf_torch_npu.train --emotion=sad [--device=auto] [--amp=auto]`.

The library entry point is `train_and_evaluate(config, options)`; `main` only
turns flags into a Config and TorchOptions. The protocol (epochs, early
stopping, outputs) is shared with the JAX trainer in iemocap/protocol.py; this
module supplies the torch steps, on an Ascend NPU, a CUDA GPU or the CPU.
"""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from absl import app
from absl import flags
from absl import logging

from flags import cli
from flags import hardware
from flags import state_dict
from iemocap import batching
from iemocap import protocol
from iemocap import records
from iemocap.errors import RunError
from lmf_torch_npu import checkpoint
from lmf_torch_npu import device as device_lib
from lmf_torch_npu import model as model_lib
from lmf_torch_npu import optimizer

BACKEND = 'torch'
DROPOUT_STREAM = 1  # keeps dropout seeds apart from the batch order's (seed, epoch) stream


def at_least_float32(x):
  return x if x.dtype in (torch.float32, torch.float64) else x.float()


def cross_entropy_sum(logits, labels):
  """The 2018 loss: cross-entropy summed over the batch (size_average=False), never in fp16."""
  return F.cross_entropy(at_least_float32(logits), labels, reduction='sum')


def train_step(model, tx, batch, amp):
  """One Adam step on one minibatch (amp: a device.MixedPrecision); returns the summed loss,
  still on the device."""
  tx.zero_grad(set_to_none=True)
  with amp.autocast():
    logits = model(batch['audio'], batch['visual'], batch['text'])
  loss = cross_entropy_sum(logits, batch['label'])
  amp.backward_and_step(loss, tx)
  return loss.detach()


def eval_step(model, batch):
  """(summed loss, logits) in eval mode: running BatchNorm statistics, no dropout, no autocast."""
  model.eval()
  with torch.no_grad():
    logits = at_least_float32(model(batch['audio'], batch['visual'], batch['text']))
  return cross_entropy_sum(logits, batch['label']), logits


def to_device(arrays, device):
  """A split's arrays as tensors on `device`, copied once for the whole run."""
  return {name: torch.from_numpy(np.ascontiguousarray(value)).to(device)
          for name, value in arrays.items()}


def gather(data, index):
  return {name: value.index_select(0, index) for name, value in data.items()}


def dropout_seed(seed, epoch):
  """The dropout seed of `epoch`, from (seed, epoch) alone: resuming needs no saved RNG state."""
  return int(np.random.SeedSequence([seed, epoch, DROPOUT_STREAM]).generate_state(1, np.uint64)[0])


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
  """The torch side of iemocap.protocol.Backend: model, optimiser, data on device and steps."""
  name = BACKEND

  def __init__(self, config, dataset, choice, precision):
    state_dict.check_fits_in_memory(config, dataset.input_dims)
    self.config, self.choice, self.precision = config, choice, precision
    device_lib.activate(choice)
    self.device = choice.torch_device()
    self.input_dims = dataset.input_dims
    torch.manual_seed(config.seed)  # the initialisation's draws
    model = model_lib.from_config(config, self.input_dims).to(self.device)
    tx = optimizer.make(config, model, choice.kind)
    self.model, self.tx, self.amp = device_lib.prepare(choice, precision, model, tx)
    self.best = self._snapshot()
    self.epoch = 0  # epochs trained so far: the dropout seed's counter
    self.data = {name: to_device(dataset.split(name).arrays(), self.device)
                 for name in ('train', 'valid', 'test')}

  def _snapshot(self):
    return {key: value.detach().clone() for key, value in self.model.state_dict().items()}

  def _step(self, index):
    return train_step(self.model, self.tx, gather(self.data['train'], index), self.amp)

  def _device_batches(self, batches):
    """The epoch's index arrays as views of one tensor copied to the device once."""
    order = torch.from_numpy(np.concatenate(batches)).to(self.device)
    return order.split([len(b) for b in batches])

  def train_epoch(self, batches):
    self.epoch += 1
    torch.manual_seed(dropout_seed(self.config.seed, self.epoch))
    self.model.train()
    total = 0
    for index in self._device_batches(batches):
      total = total + self._step(index)  # stays on the device
    return float(total)  # the epoch's one host sync

  def evaluate(self, split, best):
    model = self.model
    if best:
      dtype = next(self.model.parameters()).dtype
      model = model_lib.from_config(self.config, self.input_dims).to(self.device, dtype)
      model.load_state_dict(self.best)
    loss, logits = eval_step(model, self.data[split])
    return loss.item(), logits.cpu().numpy()  # one host sync per evaluation

  def keep_best(self, workdir, epoch):
    self.best = self._snapshot()
    # Copies the weights to the host: a sync, only in epochs that improved.
    checkpoint.save(os.path.join(workdir, records.CHECKPOINT), self.best, self.config,
                    {'epoch': epoch})

  def save_progress(self, workdir, progress):
    # The best weights travel with the state: checkpoint.safetensors may be an epoch ahead of
    # `progress` if the run stopped between the two writes.
    checkpoint.save_train_state(
        workdir, {'model': self.model.state_dict(),
                  'optimizer': checkpoint.optimizer_tensors(self.tx), 'best': self.best},
        {**progress, 'loss_scaler': self.amp.state_dict()})

  def restore(self, workdir):
    if self.precision.backend == 'apex':
      raise RunError('--resume is not supported with --amp_backend=apex (its master weights '
                     'are not saved): start the run again, or train with native AMP')
    shapes = {'model': {k: tuple(v.shape) for k, v in self.model.state_dict().items()},
              'optimizer': checkpoint.optimizer_shapes(self.tx),
              'best': {k: tuple(v.shape) for k, v in self.best.items()}}
    trees, progress = checkpoint.load_train_state(workdir, shapes)
    self.model.load_state_dict(trees['model'])
    checkpoint.load_optimizer_tensors(self.tx, trees['optimizer'])
    self.amp.load_state_dict(progress.get('loss_scaler'))
    self.epoch = progress['epoch']
    self.best = {k: v.to(device=self.device, dtype=self.best[k].dtype)
                 for k, v in trees['best'].items()}
    return progress

  def describe_device(self):
    return f'{device_lib.describe(self.choice)}, {self.precision}'

  def time_steps(self, steps, warmup=3):
    """Seconds per train step on full-size batches, warm-up excluded."""
    n, size = self.data['train']['label'].shape[0], self.config.batch_size
    batches = batching.epoch_batches(n, size, self.config.seed, 1)
    full = [b for b in batches if len(b) == size] or batches[:1]
    index = self._device_batches(full)
    self.model.train()
    for i in range(warmup):
      self._step(index[i % len(index)])
    device_lib.synchronize(self.choice)
    tick = time.perf_counter()
    for i in range(steps):
      self._step(index[i % len(index)])
    device_lib.synchronize(self.choice)
    return (time.perf_counter() - tick) / steps, len(full[0])


def train_and_evaluate(config, torch_options=device_lib.TorchOptions(), resume=False,
                       on_epoch_end=None):
  """Trains (or resumes, or reports a finished run) in config.workdir; returns results.json's record."""
  dataset, is_synthetic, data_note = records.open_dataset(config)
  logging.info(data_note)
  choice, precision = resolve(torch_options)
  with records.claim_workdir(config, BACKEND, backend_options(choice, precision),
                             resume) as (config, status):
    if status == 'complete':
      logging.info('%s already holds the finished run: reporting it', config.workdir)
      return protocol.finished_record(config)
    logging.info('workdir %s, config %s', config.workdir, config.to_dict())
    run = TorchRun(config, dataset, choice, precision)
    return protocol.train_and_evaluate(config, run, dataset, is_synthetic, status, on_epoch_end)


def measure_performance(config, torch_options, steps):
  """The seed's performance mode: step time and samples/s (FPS) after a warm-up."""
  dataset, _, data_note = records.open_dataset(config)
  logging.info(data_note)
  run = TorchRun(config, dataset, *resolve(torch_options))
  step_s, batch_size = run.time_steps(steps)
  return {'backend': BACKEND, 'device': run.describe_device(), 'emotion': config.emotion,
          **records.perf_report(batch_size, step_s, steps)}


@cli.user_errors_exit
def main(argv):
  from flags import definitions  # pylint: disable=import-outside-toplevel  (defines flags)
  from lmf_torch_npu import options as options_lib  # pylint: disable=import-outside-toplevel
  cli.refuse_arguments(argv)
  cli.reuse_freed_memory()
  config = definitions.config_from_flags()
  torch_options = options_lib.options_from_flags()
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
  from flags import definitions  # pylint: disable=ungrouped-imports
  from lmf_torch_npu import options
  flags.adopt_module_key_flags(definitions)  # `--help` lists them, not only this module's (none)
  flags.adopt_module_key_flags(options)
  app.run(main, flags_parser=cli.parse_flags)

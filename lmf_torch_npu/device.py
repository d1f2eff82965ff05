"""Where lmf_torch_npu runs and in what precision: an Ascend NPU, else CUDA, else the CPU.

torch_npu is imported only here and only when an NPU is asked for or `auto`
looks for one: without Huawei's CANN libraries (libhccl.so, ...) its import
fails, and that must not stop a CUDA or CPU run. Every "not available" is a
DeviceError of one line saying what is missing.
"""

import contextlib
import dataclasses
import functools
import importlib
import inspect
import os
from typing import Optional

import torch
from absl import logging

from flags.errors import ConfigError
from iemocap.errors import UserError

DEVICE_KINDS = ('auto', 'npu', 'cuda', 'cpu')
AMP_MODES = ('auto', 'off', 'O1', 'O2')
AMP_BACKENDS = ('native', 'apex')
SEED_LOSS_SCALE = '128'  # the Ascend seed's static loss scale with apex O2
# A static loss scale is a GradScaler that never grows (it still halves and skips a step whose
# gradients overflow, where a truly fixed scale would write inf into the weights).
NEVER = 2**31 - 1


class DeviceError(UserError, RuntimeError):
  """A requested device is not available here."""


@dataclasses.dataclass(frozen=True)
class TorchOptions:
  """What the torch trainer takes beyond the shared Config, as asked for (not yet resolved)."""
  device: str = 'auto'
  amp: str = 'auto'
  loss_scale: str = 'auto'
  amp_backend: str = 'native'


@dataclasses.dataclass(frozen=True)
class DeviceChoice:
  kind: str  # npu | cuda | cpu
  index: Optional[int]
  why: str  # how the choice was made, for the log

  @property
  def name(self):
    return self.kind if self.index is None else f'{self.kind}:{self.index}'

  def torch_device(self):
    return torch.device(self.name)


def import_torch_npu():
  """(torch_npu or None, why not). Importing torch_npu registers the 'npu' device with torch."""
  try:
    return importlib.import_module('torch_npu'), ''
  except ModuleNotFoundError as e:
    if e.name == 'torch_npu':
      return None, 'torch_npu is not installed'
    return None, f'torch_npu is installed but cannot import {e.name}'
  except (ImportError, OSError, RuntimeError) as e:
    # Typically "libhccl.so: cannot open shared object file": CANN is absent or its
    # set_env.sh was not sourced.
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None, (f'torch_npu is installed but the CANN libraries were not found ({detail}); '
                  'install CANN and source its set_env.sh (lmf_torch_npu/scripts/env_npu.sh)')


def parse_device(text):
  """(kind, index or None) of auto|npu|cuda|cpu|npu:<id>|cuda:<id>."""
  kind, colon, index = text.strip().lower().partition(':')
  if kind not in DEVICE_KINDS or (colon and (kind not in ('npu', 'cuda') or not index.isdigit())):
    raise ConfigError(f'--device={text!r}: expected auto, npu, cuda, cpu, npu:<id> or cuda:<id>')
  return kind, int(index) if colon else None


def _ascend_device_id(environ):
  text = environ.get('ASCEND_DEVICE_ID', '').strip()
  if not text:
    return 0, 'device 0 (ASCEND_DEVICE_ID unset)'
  if not text.isdigit():
    raise DeviceError(f'ASCEND_DEVICE_ID={text!r} is not a device number')
  return int(text), f'ASCEND_DEVICE_ID={text}'


def _find_npu(index, environ):
  """(DeviceChoice or None, why not)."""
  torch_npu, why_not = import_torch_npu()
  if torch_npu is None:
    return None, why_not
  count = torch_npu.npu.device_count() if torch_npu.npu.is_available() else 0
  if count == 0:
    return None, ('torch_npu imported but sees no NPU (check `npu-smi info` and '
                  'ASCEND_RT_VISIBLE_DEVICES)')
  source = f'npu:{index} asked for'
  if index is None:
    index, source = _ascend_device_id(environ)
  if index >= count:
    raise DeviceError(f'npu:{index} does not exist: {count} NPU(s) visible (ids 0-{count - 1})')
  return DeviceChoice('npu', index, f'torch_npu sees {count} NPU(s); {source}'), ''


def _find_cuda(index):
  if not torch.cuda.is_available():
    if torch.version.cuda is None:
      return None, 'this torch build has no CUDA support'
    return None, 'torch sees no CUDA device'
  count = torch.cuda.device_count()
  index = 0 if index is None else index
  if index >= count:
    raise DeviceError(f'cuda:{index} does not exist: {count} GPU(s) visible (ids 0-{count - 1})')
  return DeviceChoice('cuda', index, f'{count} CUDA GPU(s) visible'), ''


def select_device(requested='auto', environ=None):
  """The device to run on: asked for, or with `auto` an NPU, else CUDA, else the CPU."""
  environ = os.environ if environ is None else environ
  kind, index = parse_device(requested)
  skipped = []
  for candidate, find in (('npu', lambda: _find_npu(index, environ)),
                          ('cuda', lambda: _find_cuda(index))):
    if kind not in ('auto', candidate):
      continue
    choice, why_not = find()
    if choice is not None:
      return choice
    if kind == candidate:
      raise DeviceError(f'--device={requested}: {why_not}')
    skipped.append(f'no NPU ({why_not})' if candidate == 'npu' else f'no GPU ({why_not})')
  return DeviceChoice('cpu', None, '; '.join(skipped) if skipped else 'asked for')


def activate(choice):
  """Makes `choice` the current device of its kind (the Ascend convention: set_device first)."""
  if choice.kind == 'npu':
    import_torch_npu()[0].npu.set_device(choice.name)
  elif choice.kind == 'cuda':
    torch.cuda.set_device(choice.index)


def synchronize(choice):
  """Waits for the device's queued work (timing only)."""
  if choice.kind == 'npu':
    import_torch_npu()[0].npu.synchronize()
  elif choice.kind == 'cuda':
    torch.cuda.synchronize()


def describe(choice):
  if choice.kind == 'cuda':
    return f'{choice.name} ({torch.cuda.get_device_name(choice.index)})'
  if choice.kind == 'npu':
    return f'{choice.name} ({import_torch_npu()[0].npu.get_device_name(choice.index)})'
  # float32 results on the CPU depend on the thread count: the record names it
  threads = torch.get_num_threads()
  return f'cpu ({threads} thread{"s" if threads > 1 else ""})'


def import_ascend_apex():
  """(apex.amp or None, why not). Only Ascend's apex has amp.initialize(combine_grad=...)."""
  try:
    amp = importlib.import_module('apex.amp')
  except ImportError:
    return None, 'apex (Ascend\'s build) is not installed'
  if 'combine_grad' not in inspect.signature(amp.initialize).parameters:
    return None, 'the installed apex is not Ascend\'s (its amp.initialize has no combine_grad)'
  return amp, ''


@functools.cache
def cpu_bf16_lstm_works():
  """Whether bf16 autocast can run an LSTM on this CPU: x86 oneDNN has no bf16 LSTM without
  AVX-512 (a common cloud EPYC). Probed once per process, forward and backward; logged if not."""
  # Grad mode on and the caller's RNG untouched: the probe may run inside an evaluation or
  # between a seed and the dropout draws it fixes.
  with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
    rnn = torch.nn.LSTM(2, 2, batch_first=True)
    try:
      with torch.autocast('cpu', dtype=torch.bfloat16):
        _, (h_n, _) = rnn(torch.zeros(1, 1, 2))
      h_n.float().sum().backward()
    except RuntimeError as e:  # oneDNN: "could not create a primitive descriptor for the LSTM ..."
      logging.info('bf16 autocast: the LSTM runs in float32 (the rest in bf16) because this '
                   'CPU\'s oneDNN has no bf16 LSTM (%s)', str(e).split('.')[0])
      return False
  return True


@dataclasses.dataclass(frozen=True)
class Precision:
  """The resolved mixed-precision mode of a run.

  Native torch AMP has one mode, autocast, which O1 and O2 both select; the
  two differ only under Ascend apex, where O2 also keeps fp16 weights with
  fp32 master copies. BatchNorm and the loss stay in float32 either way, and
  the LSTM too where the CPU has no bf16 LSTM (`float32_lstm`).
  """
  amp: str  # off | O1 | O2
  backend: str  # none | native | apex
  dtype: Optional[torch.dtype]
  loss_scale: str  # none | dynamic | a positive number
  # In the log and results.json's device, not in options(): the request is the same, so is the
  # workdir (its fingerprint) on every CPU, as for any other difference between CPUs' kernels.
  float32_lstm: bool = False

  def options(self):
    """What goes into the run's fingerprint and config.json."""
    return {'amp': self.amp, 'amp_backend': self.backend,
            'amp_dtype': str(self.dtype).replace('torch.', '') if self.dtype else 'float32',
            'loss_scale': self.loss_scale}

  def __str__(self):
    if self.amp == 'off':
      return 'float32'
    lstm = ', LSTM in float32' if self.float32_lstm else ''
    return (f'amp {self.amp} ({self.backend}, {self.options()["amp_dtype"]}, '
            f'loss scale {self.loss_scale}{lstm})')


def _loss_scale(text, choice):
  if text == 'auto':
    return {'npu': SEED_LOSS_SCALE, 'cuda': 'dynamic'}.get(choice.kind, 'none')
  if text == 'dynamic':
    return text
  try:
    value = float(text)
  except ValueError:
    value = 0.0
  if not value > 0 or value == float('inf'):
    raise ConfigError(f'--loss_scale={text!r}: expected dynamic, auto or a positive number')
  return text


def select_precision(choice, amp='auto', loss_scale='auto', amp_backend='native'):
  """The precision of a run on `choice`; `auto` is the seed's O2 (scale 128) on NPU, fp32 elsewhere."""
  if amp not in AMP_MODES:
    raise ConfigError(f'--amp={amp!r}: expected one of {", ".join(AMP_MODES)}')
  if amp_backend not in AMP_BACKENDS:
    raise ConfigError(f'--amp_backend={amp_backend!r}: expected native or apex')
  if amp == 'auto':
    amp = 'O2' if choice.kind == 'npu' else 'off'
  if amp == 'off':
    if loss_scale != 'auto':
      raise ConfigError(f'--loss_scale={loss_scale} needs mixed precision: add --amp=O1 or O2')
    return Precision('off', 'none', None, 'none')
  backend = 'native'
  if amp_backend == 'apex':
    apex_amp, why_not = import_ascend_apex()
    if apex_amp is not None and choice.kind != 'npu':
      why_not = f'Ascend apex runs on NPUs only, and this run is on {choice.kind}'
    if apex_amp is None or choice.kind != 'npu':
      logging.warning('--amp_backend=apex: %s; using native torch AMP instead', why_not)
    else:
      backend = 'apex'
  # fp16 where the hardware is built for it; bf16 on the CPU, whose range needs no loss scale.
  dtype = torch.bfloat16 if choice.kind == 'cpu' else torch.float16
  return Precision(amp, backend, dtype, _loss_scale(loss_scale, choice),
                   float32_lstm=choice.kind == 'cpu' and not cpu_bf16_lstm_works())


class MixedPrecision:
  """A step's precision machinery: the autocast region, loss scaling and the optimiser step."""

  def __init__(self, choice, precision, scaler=None, apex_amp=None):
    self.choice, self.precision = choice, precision
    self.scaler, self.apex_amp = scaler, apex_amp

  def autocast(self):
    if self.precision.backend != 'native':
      return contextlib.nullcontext()
    if self.choice.kind == 'npu':
      return import_torch_npu()[0].npu.amp.autocast(dtype=self.precision.dtype)
    return torch.autocast(self.choice.kind, dtype=self.precision.dtype)

  def backward_and_step(self, loss, optimizer):
    if self.apex_amp is not None:
      with self.apex_amp.scale_loss(loss, optimizer) as scaled:
        scaled.backward()
      optimizer.step()
    elif self.scaler is not None:
      self.scaler.scale(loss).backward()
      # GradScaler.step reads found_inf on the host (a sync per step) unless the optimiser
      # takes the scale itself, as fused CUDA Adam does (optimizer.py picks it on CUDA).
      self.scaler.step(optimizer)
      self.scaler.update()
    else:
      loss.backward()
      optimizer.step()

  def state_dict(self):
    """The loss scaler's state (JSON-able numbers; reading the scale is a host sync)."""
    return self.scaler.state_dict() if self.scaler is not None else {}

  def load_state_dict(self, state):
    if self.scaler is not None and state:
      self.scaler.load_state_dict(state)


def _grad_scaler(choice, loss_scale):
  if choice.kind == 'npu':
    make = import_torch_npu()[0].npu.amp.GradScaler
  else:
    make = lambda **kwargs: torch.amp.GradScaler(choice.kind, **kwargs)
  if loss_scale == 'dynamic':
    return make()
  return make(init_scale=float(loss_scale), growth_interval=NEVER)


def prepare(choice, precision, model, optimizer):
  """(model, optimizer, MixedPrecision) ready to train; apex wraps the first two."""
  if precision.backend == 'apex':
    apex_amp = import_ascend_apex()[0]
    scale = 'dynamic' if precision.loss_scale == 'dynamic' else float(precision.loss_scale)
    model, optimizer = apex_amp.initialize(model, optimizer, opt_level=precision.amp,
                                           loss_scale=scale, combine_grad=True)
    return model, optimizer, MixedPrecision(choice, precision, apex_amp=apex_amp)
  scaler = None if precision.loss_scale == 'none' else _grad_scaler(choice, precision.loss_scale)
  return model, optimizer, MixedPrecision(choice, precision, scaler=scaler)

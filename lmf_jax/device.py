"""What jax runs on, for the start-of-run log, and whether it leaves a GPU or NPU idle (the
counterpart of lmf_torch_npu/device.py; jax picks its device itself)."""

import jax
from absl import logging

from flags import hardware

BACKEND = 'jax'  # the name results.json and checkpoints record
LISTED = 4  # devices named in the line; a larger host is summed up after them


def describe_devices():
  """'jax 0.10.2: 1 cpu device (cpu:0)', or '... 1 gpu device (cuda:0 NVIDIA H200)'."""
  devices = jax.devices()
  names = [str(d) if d.device_kind == d.platform else f'{d} {d.device_kind}'
           for d in devices[:LISTED]]
  if len(devices) > LISTED:
    names.append(f'... {len(devices) - LISTED} more')
  plural = 's' if len(devices) > 1 else ''
  return (f'jax {jax.__version__}: {len(devices)} {devices[0].platform} device{plural} '
          f'({", ".join(names)})')


def run_device(devices=None):
  """The device a run records in results.json: 'cpu:cpu', or 'cpu:cpu x4' over several."""
  devices = devices or jax.devices()
  count = f' x{len(devices)}' if len(devices) > 1 else ''
  return f'{devices[0].platform}:{devices[0].device_kind}{count}'


def unused_accelerator_warning(accelerators=None):
  """hardware's warning for jax's default backend; None when JAX_PLATFORMS (jax_platforms)
  chose the platform: a CPU asked for is no mistake."""
  if jax.config.jax_platforms:
    return None
  return hardware.unused_accelerator_warning('jax', jax.default_backend(), accelerators)


def log_devices():
  """The start-of-run lines: what jax runs on, and the fix when it leaves an accelerator idle."""
  logging.info(describe_devices())
  warning = unused_accelerator_warning()
  if warning:
    logging.warning(warning)

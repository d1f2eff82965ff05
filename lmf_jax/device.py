"""What jax runs on: the devices a population is sharded over, joining a multi-process run, the
start-of-run log, and whether it leaves a GPU or NPU idle (the counterpart of
lmf_torch_npu/device.py; jax picks its device itself)."""

import os
from typing import Optional

import jax
from absl import logging

from flags import hardware
from flags.errors import ConfigError

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


def initialize_distributed(coordinator_address: str = '', num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Joins a jax.distributed run when the flags name one, or when SLURM or Open MPI started this
  as one of several tasks (jax detects those itself); True when it did. Before any computation."""
  given = [coordinator_address, num_processes, process_id]
  if any(v not in ('', None) for v in given):
    if any(v in ('', None) for v in given):
      raise ConfigError('--coordinator_address, --num_processes and --process_id go together: '
                        'give all three (or none, under SLURM or Open MPI)')
    if not 0 <= process_id < num_processes:
      raise ConfigError(f'--process_id={process_id} must be in [0, --num_processes='
                        f'{num_processes})')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  if any(int(os.environ.get(name, '1') or 1) > 1 for name in ('SLURM_NTASKS',
                                                               'OMPI_COMM_WORLD_SIZE')):
    jax.distributed.initialize()
    return True
  return False


def population_devices(per_process: int = 0) -> list:
  """The devices a population is sharded over: every process's first `per_process` local
  devices (all when 0), in jax's global order."""
  if per_process < 0:
    raise ConfigError(f'--devices={per_process} must be >= 0 (0: all)')
  local = jax.local_device_count()
  if per_process > local:
    raise ConfigError(f'--devices={per_process}: this process has {local} jax device'
                      f'{"s" if local > 1 else ""}')
  count = per_process or local
  by_process = {}
  for device in jax.devices():
    by_process.setdefault(device.process_index, []).append(device)
  return [d for p in sorted(by_process) for d in by_process[p][:count]]


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

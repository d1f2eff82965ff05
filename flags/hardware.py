"""The accelerators the system exposes, whatever frameworks are installed.

A CPU-only jax or torch on a GPU or NPU machine trains many times slower and
says nothing: the trainers compare what their framework found with what the
system shows and log one line naming the fix. No framework import here, and
nothing runs at import: only files are read (the kernel driver's entries), so
a test can point `root` at a fake tree.
"""

import dataclasses
import glob
import os
import re

INSTALL_HINT = '(README: On GPUs and NPUs)'
CUDA_FIX = f'install the CUDA set with `python3 run.py --accelerator=cuda ...` {INSTALL_HINT}'
NPU_FIX = (f'install the NPU set (torch_npu, on CANN) with `python3 run.py --accelerator=npu ...` '
           f'{INSTALL_HINT}')
# jax has no Ascend backend: an NPU is for the torch trainer.
JAX_NPU_FIX = f'train on it with `python -m lmf_torch_npu.train` {INSTALL_HINT}'


@dataclasses.dataclass(frozen=True)
class Accelerator:
  kind: str  # gpu | npu
  vendor: str  # NVIDIA | Ascend
  name: str  # the model where the driver says it, else ''


def _nvidia_model(information_file):
  """The `Model:` line of the driver's per-GPU information file ('' if unreadable)."""
  try:
    with open(information_file, encoding='utf-8', errors='replace') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'Model':
          return value.strip()
  except OSError:
    pass
  return ''


def _count_nodes(root, prefix):
  """How many /dev/<prefix><number> exist under `root` (not nvidiactl, davinci_manager, ...)."""
  pattern = re.compile(re.escape(prefix) + r'\d+$')
  return sum(1 for path in glob.glob(os.path.join(root, 'dev', prefix + '*'))
             if pattern.match(os.path.basename(path)))


def visible_accelerators(root='/'):
  """[Accelerator] the system shows: NVIDIA GPUs (the driver's /proc entries, else the /dev
  nodes: containers often mount only the latter) and Ascend NPUs (/dev/davinci<N>)."""
  found = []
  gpus = sorted(glob.glob(os.path.join(root, 'proc', 'driver', 'nvidia', 'gpus', '*')))
  if gpus:
    found += [Accelerator('gpu', 'NVIDIA', _nvidia_model(os.path.join(gpu, 'information')))
              for gpu in gpus]
  else:
    found += [Accelerator('gpu', 'NVIDIA', '') for _ in range(_count_nodes(root, 'nvidia'))]
  found += [Accelerator('npu', 'Ascend', '') for _ in range(_count_nodes(root, 'davinci'))]
  return found


def _subject(accelerators, kind):
  """'an NVIDIA GPU (NVIDIA H200) is' / '8 Ascend NPUs are'."""
  vendor, count = accelerators[0].vendor, len(accelerators)
  names = sorted({a.name for a in accelerators if a.name})
  text = f'an {vendor} {kind}' if count == 1 else f'{count} {vendor} {kind}s'
  return text + (f' ({", ".join(names)})' if names else '') + (' is' if count == 1 else ' are')


def unused_accelerator_warning(framework, device_kind, accelerators=None):
  """The line to log when the system shows a GPU or NPU but `framework` (jax | torch) runs on
  `device_kind` 'cpu'; None otherwise. Call it only when the framework chose its device itself
  (torch with --device=auto, jax without JAX_PLATFORMS): a CPU asked for is no mistake."""
  if device_kind != 'cpu':
    return None
  if accelerators is None:
    accelerators = visible_accelerators()
  gpus = [a for a in accelerators if a.kind == 'gpu']
  npus = [a for a in accelerators if a.kind == 'npu']
  if gpus:
    return (f'{_subject(gpus, "GPU")} visible but the installed {framework} runs on the CPU: '
            f'{CUDA_FIX}')
  if npus:
    fix = JAX_NPU_FIX if framework == 'jax' else NPU_FIX
    return f'{_subject(npus, "NPU")} visible but the installed {framework} runs on the CPU: {fix}'
  return None

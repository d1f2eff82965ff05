"""The torch-only flags (device and mixed precision), read into a device.TorchOptions.

Importing this module defines the flags (command lines only); the shared ones live in
flags/definitions.py.
"""

from absl import flags

from flags.errors import ConfigError
from lmf_torch_npu import device

flags.DEFINE_string('device', 'auto', 'auto | npu | cuda | cpu | npu:<id> | cuda:<id>. auto: an '
                    'NPU when torch_npu imports and sees one (id from ASCEND_DEVICE_ID), else a '
                    'CUDA GPU, else the CPU.')
flags.DEFINE_enum('amp', 'auto', device.AMP_MODES, 'Mixed precision. auto: O2 on NPU (the '
                  'seed), off elsewhere. Native AMP is torch.autocast (fp16 on NPU and CUDA, '
                  'bf16 on CPU) for both O1 and O2; BatchNorm and the loss stay float32.')
flags.DEFINE_string('loss_scale', 'auto', 'dynamic | <number> | auto (128 on NPU as in the '
                    'seed, dynamic on CUDA, none for bf16 on CPU). Needs --amp.')
flags.DEFINE_enum('amp_backend', 'native', device.AMP_BACKENDS, 'native: torch AMP (torch_npu\'s '
                  'on NPU). apex: Ascend apex amp.initialize(combine_grad=True), when it is '
                  'installed and the run is on an NPU; otherwise native, with a warning.')

FLAGS = flags.FLAGS
# Flags that shape training only; `evaluate` runs in float32 and refuses them.
TRAINING_ONLY = ('amp', 'loss_scale', 'amp_backend')


def options_from_flags(values=FLAGS):
  return device.TorchOptions(device=values.device, amp=values.amp, loss_scale=values.loss_scale,
                             amp_backend=values.amp_backend)


def refuse_training_flags(values=FLAGS):
  """For `evaluate`: a precision flag there would be silently ignored, so it is an error."""
  for name in TRAINING_ONLY:
    if values[name].present:
      raise ConfigError(f'--{name} is a training flag: evaluate runs the checkpoint in float32')

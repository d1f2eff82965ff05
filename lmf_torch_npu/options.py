"""The torch-only flags (device and mixed precision), read into a device.TorchOptions.

Importing this module defines nothing; the command lines call the define functions once
(evaluate takes --device only: it runs in float32). The shared flags are in
flags/definitions.py.
"""

from absl import flags

from lmf_torch_npu import device


def define_device_flag():
  flags.DEFINE_string('device', 'auto', 'auto | npu | cuda | cpu | npu:<id> | cuda:<id>. auto: '
                      'an NPU when torch_npu imports and sees one (id from ASCEND_DEVICE_ID), '
                      'else a CUDA GPU, else the CPU.')


def define_flags():
  """--device and the mixed-precision flags of the trainer."""
  define_device_flag()
  flags.DEFINE_enum('amp', 'auto', device.AMP_MODES, 'Mixed precision. auto: O2 on NPU (the '
                    'seed), off elsewhere. Native AMP is torch.autocast (fp16 on NPU and CUDA, '
                    'bf16 on CPU) for both O1 and O2; BatchNorm and the loss stay float32.')
  flags.DEFINE_string('loss_scale', 'auto', 'dynamic | <number> | auto (128 on NPU as in the '
                      'seed, dynamic on CUDA, none for bf16 on CPU). Needs --amp.')
  flags.DEFINE_enum('amp_backend', 'native', device.AMP_BACKENDS, 'native: torch AMP '
                    '(torch_npu\'s on NPU). apex: Ascend apex amp.initialize(combine_grad=True), '
                    'when it is installed and the run is on an NPU; otherwise native, with a '
                    'warning.')


def options_from_flags(values=flags.FLAGS):
  return device.TorchOptions(device=values.device, amp=values.amp, loss_scale=values.loss_scale,
                             amp_backend=values.amp_backend)

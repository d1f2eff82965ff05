"""The torch-only flags (device and mixed precision, read into a device.TorchOptions; export's).

Importing this module defines nothing; the command lines call the define functions once
(evaluate and predict take --device only: they run in float32). The shared flags are in
flags/definitions.py.
"""

from absl import flags

from flags import evaluation
from iemocap.data import EMOTIONS
from iemocap.data import SPLITS
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


def define_export_flags(opsets, dtypes):
  """The flags of lmf_torch_npu.export."""
  evaluation.define_checkpoint_flag()
  flags.DEFINE_string('out', '', 'The .onnx file to write.')
  flags.DEFINE_boolean('overwrite', False, 'Replace an existing --out (atomically).')
  flags.DEFINE_integer('opset', 17, f'ONNX opset, {opsets[0]} to {opsets[-1]}; 11 for Ascend\'s '
                       'ATC (its LSTM mapping stops at opset 13).')
  flags.DEFINE_string('batch', 'dynamic', 'dynamic (a batch axis of any size), or a fixed batch '
                      'size K.')
  flags.DEFINE_enum('dtype', dtypes[0], dtypes, 'Weights, inputs and logits; float16 keeps '
                    'BatchNorm in float32 (as the NPU trainer\'s O2 does).')
  flags.DEFINE_string('emotion', '', f'{"|".join(EMOTIONS)}: needed for a bare two-class 2018 '
                      'state_dict; empty: the checkpoint\'s own.')
  flags.DEFINE_string('features', '', 'Check the graph with onnxruntime on these utterances (a '
                      'features .npz or a data file); empty: on seeded random ones.')
  flags.DEFINE_enum('split', 'test', SPLITS, 'The split of a data file given as --features.')

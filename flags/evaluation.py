"""Flags of the `evaluate` commands of both backends.

`--emotion` and `--data_path` are the training flags; an `--emotion` not given
on the command line means the checkpoint's own emotion (a bare 2018 state_dict
records none: it needs one). No other training flag exists there: the model's
configuration comes from the checkpoint, and absl refuses an unknown flag in
one line.
"""

from absl import flags

from flags import definitions
from iemocap.data import SPLITS


def define_checkpoint_flag():
  flags.DEFINE_string('checkpoint', '', 'checkpoint.safetensors written by lmf_jax or '
                      'lmf_torch_npu, the workdir of a run (its best model), or a bare 2018 '
                      'state_dict (torch.save\'d .pt, or safetensors) with --emotion.')


def define_flags():
  definitions.define_data_flags()
  define_checkpoint_flag()
  flags.DEFINE_enum('split', 'test', SPLITS, 'Split to evaluate.')
  flags.DEFINE_boolean('json', False, 'Print one JSON record instead of text.')

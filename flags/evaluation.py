"""Flags of the `evaluate` commands of both backends (importing this module defines them).

`--emotion` and `--data_path` are the training flags; an `--emotion` not given
on the command line means the checkpoint's own emotion.
"""

import os

from absl import flags

from flags import definitions
from flags.errors import ConfigError
from iemocap import records
from iemocap.data import SPLITS

flags.DEFINE_string('checkpoint', '', 'checkpoint.safetensors written by lmf_jax or lmf_torch_npu, '
                    'or the workdir of a run (its best model).')
flags.DEFINE_enum('split', 'test', SPLITS, 'Split to evaluate.')
flags.DEFINE_boolean('json', False, 'Print one JSON record instead of text.')

FLAGS = definitions.FLAGS
_EVALUATE_FLAGS = ('checkpoint', 'split', 'json', 'emotion', 'data_path', 'data_url')


def evaluation_request(values=FLAGS):
  """(checkpoint path, emotion or '' for the checkpoint's, data_path, split)."""
  if not values.checkpoint:
    raise ConfigError('--checkpoint is required: pass the checkpoint.safetensors to evaluate')
  path = values.checkpoint
  if os.path.isdir(path):  # a run's workdir: its best model
    path = os.path.join(path, records.CHECKPOINT)
  for name in definitions.TRAINING_ONLY:
    if name not in _EVALUATE_FLAGS and values[name].present:
      raise ConfigError(f'--{name} is a training flag: evaluate reads the model\'s '
                        'configuration from the checkpoint')
  emotion = values.emotion if values['emotion'].present else ''
  return path, emotion, values.data_path, values.split

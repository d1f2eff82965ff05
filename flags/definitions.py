"""The absl flags both trainers share, and their resolution into one frozen Config.

Precedence for each hyperparameter: the emotion's preset, then `--para_path`
(the Ascend param_data.csv), then a flag given on the command line.
"""

import os

from absl import flags

from flags import presets
from flags.config import Config
from flags.errors import ConfigError
from iemocap.data import EMOTIONS, normalize_emotion
from iemocap.errors import DataError

_PRESET_HELP = ' (default: the emotion\'s preset)'

flags.DEFINE_string('emotion', 'neutral',
                    f'Emotion task: {"|".join(EMOTIONS)}; the seed\'s spellings b\'sad\' and '
                    '"b\'sad\'" work too.')
flags.DEFINE_string('data_path', '', 'iemocap.pkl / iemocap.npz, or a directory holding one; '
                    'empty: the synthetic stand-in (generated once, then cached).')
flags.DEFINE_string('workdir', '', 'Where results, checkpoints and logs go; empty: '
                    'runs/<backend>-<emotion>-<config fingerprint>.')
flags.DEFINE_alias('data_url', 'data_path')
flags.DEFINE_alias('train_url', 'workdir')
flags.DEFINE_string('para_path', '', 'Ascend param_data.csv: per-emotion hyperparameters '
                    '(rows angry, sad, happy, neutral; 11 numbers each).')
flags.DEFINE_integer('epochs', 500, 'Maximum number of epochs.')
flags.DEFINE_integer('patience', 20, 'Stop after this many epochs without a lower valid loss.')
flags.DEFINE_integer('output_dim', 2, 'Model outputs (2: emotion absent / present).')
flags.DEFINE_integer('seed', 0, 'Seed of the initialisation, dropout and batch order.')
for _name in presets.INT_HPARAMS:
  flags.DEFINE_integer(_name, None, _name.replace('_', ' ') + _PRESET_HELP)
for _name in presets.HPARAMS:
  if _name not in presets.INT_HPARAMS:
    flags.DEFINE_float(_name, None, _name.replace('_', ' ') + _PRESET_HELP)
flags.DEFINE_boolean('resume', False, 'Continue the interrupted run in --workdir.')
flags.DEFINE_integer('perf_steps', 0, 'Performance mode: time this many train steps after a '
                     'warm-up and print step time and samples/s instead of training.')

FLAGS = flags.FLAGS
# Flags that shape a training run, which `evaluate` refuses (it reads the checkpoint's config).
TRAINING_ONLY = ('workdir', 'para_path', 'epochs', 'patience', 'output_dim', 'seed', 'resume',
                 'perf_steps') + presets.HPARAMS


def config_from_flags(values=FLAGS, emotion=None):
  """The run's Config: preset < --para_path < explicit flags (`emotion` overrides --emotion)."""
  try:
    emotion = normalize_emotion(emotion or values.emotion)
  except DataError as e:
    raise ConfigError(str(e)) from None
  if values.perf_steps < 0:
    raise ConfigError(f'--perf_steps={values.perf_steps} must be >= 0 (0 trains; N times N steps)')
  hparams = presets.preset(emotion)
  if values.para_path:
    hparams.update(presets.read_param_csv(values.para_path)[emotion])
  for name in presets.HPARAMS:
    if values[name].value is not None:
      hparams[name] = values[name].value
  # Absolute, so the saved config (and the checkpoint's) still finds the data from elsewhere.
  data_path = os.path.abspath(os.path.expanduser(values.data_path)) if values.data_path else ''
  return Config(emotion=emotion, data_path=data_path, workdir=values.workdir,
                epochs=values.epochs, patience=values.patience, output_dim=values.output_dim,
                seed=values.seed, **hparams)

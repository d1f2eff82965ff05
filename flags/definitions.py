"""The absl flags both trainers share, and their resolution into one frozen Config.

Importing this module defines no flag: a command line calls define_training_flags (or
define_data_flags) once, so a library user's process keeps its own flags.

Precedence for each hyperparameter: the emotion's preset, then `--para_path`
(the Ascend param_data.csv), then a flag given on the command line.
"""

import dataclasses
import os

from absl import flags

from flags import presets
from flags.config import Config
from flags.errors import ConfigError
from iemocap.synthetic_formats import POM_TRAITS
from iemocap import formats
from iemocap.data import EMOTIONS, REGRESSION_TARGETS, TARGETS, normalize_emotion
from iemocap.errors import DataError

_PRESET_HELP = ' (default: the emotion\'s preset)'
FLAGS = flags.FLAGS


def define_data_flags(flag_values=FLAGS):
  """--emotion and --data_path (alias --data_url): what every command that reads data takes."""
  where = {'flag_values': flag_values}
  flags.DEFINE_string('emotion', '',
                      f'What to learn: an IEMOCAP emotion ({"|".join(EMOTIONS)}; the seed\'s '
                      'spellings b\'sad\' and "b\'sad\'" work too), or a regression set\'s '
                      f'target ({"|".join(REGRESSION_TARGETS)}). Empty: the data\'s (neutral '
                      'for IEMOCAP, as the seed; sentiment for CMU-MOSI/MOSEI and CH-SIMS; '
                      'traits for POM).', **where)
  flags.DEFINE_string('data_path', '', 'iemocap.pkl / iemocap.npz, MulT\'s iemocap_data.pkl, or a '
                      'directory holding one; a regression file (2018 mosi.pkl / pom.pkl, '
                      'MulT, MMSA, a CMU-SDK .csd set); `python -m iemocap inspect` tells what '
                      'a file holds. Empty: the synthetic stand-in of the target (generated '
                      'once, then cached).', **where)
  flags.DEFINE_alias('data_url', 'data_path', **where)


def define_training_flags(flag_values=FLAGS):
  """The data flags and every flag that shapes a training run (in the process's flags unless
  `flag_values` names others)."""
  where = {'flag_values': flag_values}
  define_data_flags(flag_values)
  flags.DEFINE_string('workdir', '', 'Where results, checkpoints and logs go; empty: '
                      'runs/<backend>-<emotion>-<config fingerprint>.', **where)
  flags.DEFINE_alias('train_url', 'workdir', **where)
  flags.DEFINE_string('para_path', '', 'Ascend param_data.csv: per-emotion hyperparameters '
                      '(rows angry, sad, happy, neutral; 11 numbers each).', **where)
  flags.DEFINE_integer('epochs', 500, 'Maximum number of epochs.', **where)
  flags.DEFINE_integer('patience', 20, 'Stop after this many epochs without a lower valid loss.',
                       **where)
  flags.DEFINE_integer('output_dim', 0, 'Model outputs; 0: the task\'s (2 for an emotion: absent '
                       '/ present; 1 sentiment score; one per POM trait in the file).', **where)
  flags.DEFINE_integer('seed', 0, 'Seed of the initialisation, dropout and batch order.', **where)
  for name in presets.HPARAMS:
    define = flags.DEFINE_integer if name in presets.INT_HPARAMS else flags.DEFINE_float
    define(name, None, name.replace('_', ' ') + _PRESET_HELP, **where)
  flags.DEFINE_boolean('resume', False, 'Continue the interrupted run in --workdir.', **where)
  flags.DEFINE_integer('perf_steps', 0, 'Performance mode: time this many train steps after a '
                       'warm-up and print step time and samples/s instead of training.', **where)


def define_population_flags(flag_values=FLAGS):
  """--num_seeds, --sweep, --save_members and where the trials run: both trainers take them."""
  where = {'flag_values': flag_values}
  flags.DEFINE_integer('num_seeds', 1, 'Train this many models (seeds --seed, --seed+1, ...) '
                       'and report mean, spread and the model with the lowest valid loss.',
                       **where)
  flags.DEFINE_multi_string('sweep', [], 'name=v1,v2,...: train every value (crossed with the '
                            'other sweeps and the seeds), e.g. --sweep=lr=0.0005,0.001. '
                            'Repeatable.', **where)
  flags.DEFINE_boolean('save_members', False, 'With --num_seeds/--sweep: also write every '
                       'model\'s checkpoint under members/.', **where)
  flags.DEFINE_string('ray_address', '', 'Where a population\'s trials run. lmf_torch_npu: '
                      'empty starts Ray on this machine when it is installed (else the trials '
                      'run in this process); none: in this process, one after another; local: '
                      'Ray on this machine; auto or HOST:PORT: a running Ray cluster. lmf_jax: '
                      'empty trains the population in this process; any other value sends '
                      'packs of models to Ray.', **where)
  flags.DEFINE_integer('cpus_per_trial', 0, 'CPU cores each trial (or pack) reserves on Ray; '
                       'torch uses that many threads on the CPU. 0: 1 on Ray (as many trials '
                       'at once as cores), torch\'s default in this process.', **where)


def config_from_flags(values=FLAGS, emotion=None):
  """The run's Config: preset < --para_path < explicit flags (`emotion` overrides --emotion).
  Without an emotion, and for the outputs of POM's traits, the data file decides."""
  # Absolute, so the saved config (and the checkpoint's) still finds the data from elsewhere.
  data_path = os.path.abspath(os.path.expanduser(values.data_path)) if values.data_path else ''
  try:
    emotion = normalize_emotion(emotion or values.emotion or (
        formats.default_target(formats.peek(data_path)) if data_path else 'neutral'))
    output_dim = values.output_dim or target_outputs(emotion, data_path)
  except DataError as e:
    raise ConfigError(str(e)) from None
  if values.perf_steps < 0:
    raise ConfigError(f'--perf_steps={values.perf_steps} must be >= 0 (0 trains; N times N steps)')
  hparams = presets.preset(emotion)
  if values.para_path:
    if emotion not in EMOTIONS:
      raise ConfigError(f'--para_path holds the four emotions\' settings; {emotion} has none '
                        'there: pass its hyperparameters as flags instead')
    hparams.update(presets.read_param_csv(values.para_path)[emotion])
  for name in presets.HPARAMS:
    if values[name].value is not None:
      hparams[name] = values[name].value
  return Config(emotion=emotion, data_path=data_path, workdir=values.workdir,
                epochs=values.epochs, patience=values.patience, output_dim=output_dim,
                seed=values.seed, **hparams)


def target_outputs(emotion, data_path):
  """The model outputs `emotion` needs when --output_dim is not given: 0 (Config's own: 2
  classes, 1 sentiment score), but for POM's traits the data file's count (16 in the synthetic
  stand-in)."""
  if emotion != 'traits':
    return 0
  return formats.label_columns(formats.peek(data_path)) if data_path else POM_TRAITS


def targets_in(data_path):
  """What `all` means for a data file: its four emotions (IEMOCAP) or its one target; without a
  file, every target of the synthetic stand-ins."""
  if not data_path:
    return TARGETS
  source = formats.peek(data_path)
  return EMOTIONS if source.is_iemocap else (formats.default_target(source),)


def population_configs(values=FLAGS):
  """The Config of each emotion a population command trains: the one of --emotion, or with
  --emotion=all the four (a regression file's one target), each in <--workdir>/<emotion> when
  --workdir is given."""
  if values.emotion.strip().lower() != 'all':
    return [config_from_flags(values)]
  data_path = os.path.abspath(os.path.expanduser(values.data_path)) if values.data_path else ''
  try:
    targets = targets_in(data_path) if data_path else EMOTIONS
  except DataError as e:
    raise ConfigError(str(e)) from None
  configs = []
  for emotion in targets:
    config = config_from_flags(values, emotion)
    if values.workdir:
      config = dataclasses.replace(config, workdir=os.path.join(values.workdir, emotion))
    configs.append(config)
  return configs

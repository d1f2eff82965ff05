"""The JAX trainer's own absl flags (the shared ones live in flags/definitions.py).

They live apart from train.py because `python -m lmf_jax.train` runs train.py as
__main__, and a module that is also imported must not define flags twice.
"""

from absl import flags

from flags.errors import ConfigError

flags.DEFINE_integer('num_seeds', 1, 'Train this many models (seeds --seed, --seed+1, ...) side by '
                     'side in one vmapped program and report mean, spread and the model with the '
                     'lowest valid loss.')
flags.DEFINE_multi_string('sweep', [], 'name=v1,v2,...: train every value (crossed with the other '
                          'sweeps and the seeds), e.g. --sweep=lr=0.0005,0.001. Repeatable.')
flags.DEFINE_boolean('save_members', False, 'With --num_seeds/--sweep: also write every model\'s '
                     'checkpoint under members/.')

FLAGS = flags.FLAGS
# Flags that shape training only; `evaluate` refuses them.
TRAINING_ONLY = ('num_seeds', 'sweep', 'save_members')


def refuse_training_flags(values=FLAGS):
  """For `evaluate`: a training flag there would be silently ignored, so it is an error."""
  for name in TRAINING_ONLY:
    if values[name].present:
      raise ConfigError(f'--{name} is a training flag: evaluate reads one checkpoint')

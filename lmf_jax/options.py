"""The JAX trainer's own absl flags (the shared ones are in flags/definitions.py).

Importing this module defines nothing; `python -m lmf_jax.train` calls define_flags once.
"""

from absl import flags


def define_flags():
  flags.DEFINE_integer('devices', 0, 'Shard a population\'s models over at most this many of '
                       'each process\'s jax devices (0: all of them); with --ray_address, the '
                       'GPUs each pack asks for (0: 1).')
  flags.DEFINE_integer('models_per_pack', 0, 'With --ray_address: models in each pack sent to a '
                       'Ray worker (0: split the population over what the cluster runs at '
                       'once).')
  flags.DEFINE_string('coordinator_address', '', 'jax.distributed: HOST:PORT of process 0, to '
                      'train one population over several processes or hosts. Without it, '
                      'SLURM and Open MPI jobs of several tasks are detected.')
  flags.DEFINE_integer('num_processes', None, 'jax.distributed: how many processes take part.')
  flags.DEFINE_integer('process_id', None, 'jax.distributed: this process\'s index (0 writes '
                       'the outputs).')

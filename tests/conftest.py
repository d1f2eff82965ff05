"""Shared fixtures: small synthetic data sets in the real file's format."""

import os

import pytest

# Tests never write into the user's cache.
os.environ['LMF_CACHE_DIR'] = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                                          '.cache', 'test-cache')

from engine import cli  # pylint: disable=wrong-import-position
from iemocap import synthetic  # pylint: disable=wrong-import-position
from lmf_jax import train as jax_train  # pylint: disable=wrong-import-position

# Many tests build programs of the same shapes in fresh jit wrappers; the persistent cache
# (in the test cache dir above) compiles each once per session, subprocesses included.
jax_train.enable_compilation_cache()
# As the command lines do: XLA's per-call buffers come from the heap, not fresh pages.
cli.reuse_freed_memory()

SMALL_SIZES = (160, 60, 60)


@pytest.fixture(scope='session')
def small_data_dir(tmp_path_factory):
  """A directory holding a small synthetic iemocap.pkl (seed 0)."""
  directory = tmp_path_factory.mktemp('small_iemocap')
  synthetic.write(directory, seed=0, sizes=SMALL_SIZES)
  return str(directory)


@pytest.fixture(scope='session')
def small_data_file(small_data_dir):
  return os.path.join(small_data_dir, 'iemocap.pkl')

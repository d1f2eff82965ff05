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


class SmallRuns:
  """{backend: workdir} of one small finished run per backend, each trained when first asked for."""

  def __init__(self, data_dir, root):
    self._data_dir, self._root, self._workdirs = data_dir, root, {}

  def __getitem__(self, backend):
    if backend not in self._workdirs:
      import run_helpers  # pylint: disable=import-outside-toplevel
      self._workdirs[backend] = run_helpers.train_small(self._data_dir, self._root / backend,
                                                        backend)
    return self._workdirs[backend]


@pytest.fixture(scope='session')
def small_runs(small_data_dir, tmp_path_factory):
  """SmallRuns, shared by the tests that only read the runs (predict, export)."""
  return SmallRuns(small_data_dir, tmp_path_factory.mktemp('small-runs'))

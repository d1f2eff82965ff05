"""lmf_jax.export: the eval-mode forward as serialized StableHLO, through its command line; the
deserialized program against the Predictor, at any batch and text length; the refusals."""

import json
import os

import jax
import numpy as np
import pytest

from engine import cli
from lmf_jax import export
from lmf_jax import predict
import run_helpers


@pytest.fixture(scope='module')
def workdir(small_data_dir, tmp_path_factory):
  return run_helpers.train_small(small_data_dir, tmp_path_factory.mktemp('jax-export') / 'run',
                                 'jax')


def test_the_exported_program_is_the_predictors_forward(workdir, tmp_path):
  out = tmp_path / 'model.jax_exported'
  result = run_helpers.run_cli('lmf_jax.export', f'--checkpoint={workdir}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'dynamic batch, dynamic text steps' in result.stdout
  record = json.loads((tmp_path / 'model.jax_exported.json').read_text())
  assert record['outputs'] == ['not_sad', 'sad'] and record['inputs'] == {
      'audio': 74, 'visual': 35, 'text': 300}
  assert record['jax_version'] == jax.__version__
  call = export.load(str(out))
  predictor = predict.Predictor(workdir)
  rng = np.random.default_rng(1)
  for n, steps in ((3, 20), (11, 9)):  # any batch, any text length
    inputs = [rng.normal(size=s).astype(np.float32) for s in ((n, 74), (n, 35), (n, steps, 300))]
    np.testing.assert_allclose(np.asarray(call(*inputs)), predictor.logits(*inputs), atol=1e-6)
  again = run_helpers.run_cli('lmf_jax.export', f'--checkpoint={workdir}', f'--out={out}')
  run_helpers.assert_one_line(again, r'model.jax_exported exists: .* --overwrite')


def test_a_fixed_batch_takes_that_batch_only(workdir, tmp_path):
  from engine import state_dict  # pylint: disable=import-outside-toplevel
  arrays, config, _ = state_dict.load_checkpoint(os.path.join(workdir, 'checkpoint.safetensors'))
  serialized = export.export(arrays, config, batch=4, platforms=('cpu',))
  assert export.check(serialized, arrays, config, batch=4) <= export.CHECK_TOLERANCE
  program = jax.export.deserialize(bytearray(serialized))
  assert [a.shape[0] for a in program.in_avals] == [4, 4, 4]
  with pytest.raises(Exception, match='4'):
    program.call(*[np.zeros(s, np.float32) for s in ((3, 74), (3, 35), (3, 20, 300))])
  with pytest.raises(export.ConfigError, match='--platforms=gpu'):
    export.export(arrays, config, platforms=('gpu',))
  with pytest.raises(export.ConfigError, match='--batch=0'):
    cli.parse_batch('0')

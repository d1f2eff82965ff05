"""predict: both command lines on each other's checkpoints, the Predictor API, features files,
and bare 2018 state_dicts in predict and evaluate."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from engine import prediction
from engine import records
from engine.errors import CheckpointError
from flags.errors import ConfigError
from iemocap import data as data_lib
from iemocap import formats
from iemocap.errors import DataError
from lmf_jax import evaluate as jax_evaluate
from lmf_jax import predict as jax_predict
from lmf_torch_npu import checkpoint as torch_checkpoint
from lmf_torch_npu import evaluate as torch_evaluate
from lmf_torch_npu import predict as torch_predict
from tests import run_helpers

N = 9


@pytest.fixture(scope='module')
def workdirs(small_runs):
  """{backend: workdir} of one small finished run per backend (conftest's, shared with export)."""
  return {backend: small_runs[backend] for backend in ('jax', 'torch')}


def features(seed=0, n=N, audio_dim=data_lib.AUDIO_DIM, with_ids=True):
  rng = np.random.default_rng(seed)
  arrays = {'covarep': 10 * rng.standard_normal((n, audio_dim)).astype(np.float32),
            'facet': rng.standard_normal((n, data_lib.VISUAL_DIM)),
            'glove': rng.standard_normal((n, 20, data_lib.TEXT_DIM)).astype(np.float32)}
  if with_ids:
    arrays['id'] = np.array([f'Ses01F_impro01_F{i:03d}' for i in range(n)])
  return arrays


@pytest.fixture(scope='module')
def features_file(tmp_path_factory):
  """A features .npz with ids, one NaN and two inf in covarep."""
  arrays = features()
  arrays['covarep'][0, 0] = np.nan
  arrays['covarep'][1, 3] = np.inf
  arrays['covarep'][2, 5] = -np.inf
  path = tmp_path_factory.mktemp('features') / 'features.npz'
  np.savez(path, **arrays)
  return str(path)


def read_rows(path):
  with open(path, encoding='utf-8') as f:
    if path.endswith('.csv'):
      return [{k: v if k in ('id', 'prediction') else float(v) for k, v in row.items()}
              for row in csv.DictReader(f)]
    return [json.loads(line) for line in f]


def assert_rows_match(rows, predictions):
  probs = predictions.probabilities
  assert [row['id'] for row in rows] == list(predictions.features.ids)
  assert list(rows[0]) == ['id', 'prob_not_sad', 'prob_sad', 'prediction']
  np.testing.assert_allclose([[row['prob_not_sad'], row['prob_sad']] for row in rows], probs,
                             atol=1e-6)
  assert [row['prediction'] for row in rows] == predictions.labels


def test_each_backend_predicts_the_others_checkpoint_to_csv_and_jsonl(workdirs, features_file,
                                                                      tmp_path):
  runs = {'csv': ('lmf_jax.predict', workdirs['torch'], jax_predict.Predictor),
          'jsonl': ('lmf_torch_npu.predict', workdirs['jax'], torch_predict.Predictor)}
  for extension, (module, workdir, other_backend) in runs.items():
    out = str(tmp_path / f'predictions.{extension}')
    result = run_helpers.run_cli(module, f'--checkpoint={workdir}', f'--features={features_file}',
                                 f'--out={out}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'predicted {N} utterances' in result.stdout
    assert 'replaced 1 NaN and 2 inf in covarep, 0 in facet' in result.stdout
    # The file agrees with the checkpoint's own backend through the library.
    assert_rows_match(read_rows(out), other_backend(workdir).predict_file(features_file))


def test_the_two_predictors_agree_and_batching_changes_nothing(workdirs, features_file):
  for workdir in workdirs.values():
    ours = jax_predict.Predictor(workdir, batch_size=4)  # batches of 4, 4 and 1 padded to 1
    theirs = torch_predict.Predictor(workdir, batch_size=512, device='cpu')
    logits = ours.predict_file(features_file).logits
    np.testing.assert_allclose(logits, theirs.predict_file(features_file).logits, atol=1e-5)
    np.testing.assert_allclose(logits, jax_predict.Predictor(workdir).predict_file(
        features_file).logits, atol=1e-6)
    assert [jax_predict.padded_size(n, 512) for n in (1, 3, 300, 512)] == [1, 4, 512, 512]


def test_nonfinite_features_are_zeroed_and_counted_as_in_training(workdirs):
  predictor = torch_predict.Predictor(workdirs['jax'], device='cpu')
  arrays = features(with_ids=False)
  dirty = {k: v.copy() for k, v in arrays.items()}
  dirty['covarep'][4, 1] = np.nan
  dirty['facet'][2, 0] = np.inf
  clean = {k: v.copy() for k, v in arrays.items()}
  clean['covarep'][4, 1] = 0
  clean['facet'][2, 0] = 0
  got = predictor.predict(**dirty)
  assert got.features.replaced_text() == 'replaced 1 NaN and 0 inf in covarep, 0 NaN and 1 inf in facet'
  assert got.features.ids is None
  np.testing.assert_array_equal(got.logits, predictor.predict(**clean).logits)
  rows = prediction.rows(got)
  assert [row['index'] for row in rows] == list(range(N))
  arrays['glove'][0, 0, 0] = np.nan  # GloVe is never cleaned: training refuses it too
  with pytest.raises(DataError, match='glove'):
    predictor.predict(**arrays)


def test_features_of_the_wrong_shape_fail_in_one_line_and_write_nothing(workdirs, tmp_path):
  path = tmp_path / 'narrow.npz'
  np.savez(path, **features(audio_dim=70))
  out = tmp_path / 'predictions.csv'
  result = run_helpers.run_cli('lmf_torch_npu.predict', f'--checkpoint={workdirs["jax"]}',
                               f'--features={path}', f'--out={out}')
  run_helpers.assert_one_line(result, r'covarep \(audio\) .* has shape \(9, 70\), but the '
                              r"checkpoint's model takes \(N, 74\)")
  assert not os.path.exists(out) and os.listdir(tmp_path) == ['narrow.npz']
  predictor = jax_predict.Predictor(workdirs['torch'])
  bad = features()
  for change, pattern in ((lambda a: a.pop('facet'), 'has no facet array'),
                          (lambda a: a.update(label=np.zeros(N)), 'holds label'),
                          (lambda a: a.update(glove=a['glove'][:, :, :299]), r'takes \(N, T, 300\)'),
                          (lambda a: a.update(facet=a['facet'][:5]), 'different numbers'),
                          (lambda a: a.update(id=np.arange(N + 1)), r'expected \(9,\)')):
    arrays = {k: v.copy() for k, v in bad.items()}
    change(arrays)
    np.savez(tmp_path / 'bad.npz', **arrays)
    with pytest.raises(DataError, match=pattern):
      predictor.predict_file(str(tmp_path / 'bad.npz'))
  np.savez(tmp_path / 'objects.npz', **{**bad, 'id': np.array(list(bad['id']), dtype=object)})
  with pytest.raises(DataError, match='holds Python objects'):
    predictor.predict_file(str(tmp_path / 'objects.npz'))


def test_a_data_file_split_is_predicted_and_an_existing_out_is_kept(workdirs, small_data_dir,
                                                                    tmp_path):
  predictor = jax_predict.Predictor(workdirs['jax'])
  valid = predictor.predict_file(small_data_dir, split='valid')
  dataset = formats.load(small_data_dir, 'sad')
  assert valid.features.n == dataset.valid.n and valid.features.ids is None
  np.testing.assert_array_equal(valid.features.audio, dataset.valid.audio)
  out = tmp_path / 'kept.jsonl'
  out.write_text('mine\n')
  result = run_helpers.run_cli('lmf_jax.predict', f'--checkpoint={workdirs["jax"]}',
                               f'--features={small_data_dir}', '--split=valid', f'--out={out}')
  run_helpers.assert_one_line(result, 'exists: choose another --out, or pass --overwrite')
  assert out.read_text() == 'mine\n'
  prediction.check_output(str(out), overwrite=True)  # --overwrite lets it through
  with pytest.raises(ConfigError, match='.csv or .jsonl'):
    prediction.check_output(str(tmp_path / 'predictions.txt'), overwrite=False)
  with pytest.raises(ConfigError, match='trained for sad'):
    jax_predict.Predictor(workdirs['jax'], emotion='happy')


def bare_state_dicts(workdir, directory):
  """The run's weights as torch.save'd state_dicts, as the 2018 code's module holds them: with
  num_batches_tracked (torch >= 0.4.1) and without (older torch)."""
  model, _, _ = torch_checkpoint.load(os.path.join(workdir, records.CHECKPOINT))
  tensors = model.state_dict()
  paths = {'with_counts': directory / 'lmf.pt', 'without_counts': directory / 'lmf_old.pt'}
  torch.save(tensors, paths['with_counts'])
  torch.save({k: v for k, v in tensors.items() if not k.endswith('num_batches_tracked')},
             paths['without_counts'])
  return {name: str(path) for name, path in paths.items()}


def test_a_bare_2018_state_dict_is_evaluated_and_predicted(workdirs, small_data_dir,
                                                           features_file, tmp_path):
  bare = bare_state_dicts(workdirs['torch'], tmp_path)
  own = jax_evaluate.evaluate(os.path.join(workdirs['torch'], records.CHECKPOINT),
                              data_path=small_data_dir)
  result = run_helpers.run_cli('lmf_jax.evaluate', f'--checkpoint={bare["without_counts"]}',
                               '--emotion=sad', f'--data_path={small_data_dir}', '--json')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert report['f1'] == own['f1'] and report['written_by'] == 'a bare 2018 state_dict'
  assert torch_evaluate.evaluate(bare['with_counts'], emotion='sad', data_path=small_data_dir,
                                 device='cpu')['f1'] == own['f1']
  expected = jax_predict.Predictor(workdirs['torch']).predict_file(features_file).logits
  for path in bare.values():
    for predictor in (jax_predict.Predictor(path, emotion='sad'),
                      torch_predict.Predictor(path, emotion='sad', device='cpu')):
      np.testing.assert_allclose(predictor.predict_file(features_file).logits, expected,
                                 atol=1e-6)
  with pytest.raises(CheckpointError, match='pass --emotion'):
    jax_predict.Predictor(bare['with_counts'])
  model, _, _ = torch_checkpoint.load(os.path.join(workdirs['torch'], records.CHECKPOINT))
  torch.save(model, tmp_path / 'module.pt')  # what the 2018 code saved: a pickled module
  with pytest.raises(CheckpointError, match=r'weights_only=True\) refuses'):
    torch_predict.Predictor(str(tmp_path / 'module.pt'), emotion='sad', device='cpu')

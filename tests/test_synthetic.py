"""The synthetic stand-in: the real file's format, deterministic, and shaped like the real data."""

import hashlib
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from iemocap import pickle_io
from iemocap import synthetic
import iemocap


def _sha(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  a = synthetic.write(tmp_path / 'a', seed=3, sizes=(40, 10, 10))
  b = synthetic.write(tmp_path / 'b', seed=3, sizes=(40, 10, 10))
  c = synthetic.write(tmp_path / 'c', seed=4, sizes=(40, 10, 10))
  assert _sha(a) == _sha(b) != _sha(c)


def test_command_writes_the_file(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'iemocap', 'synth', '--out', str(tmp_path),
                           '--seed', '3', '--sizes', '40,10,10'], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert _sha(tmp_path / 'iemocap.pkl') == _sha(synthetic.write(tmp_path / 'x', 3, (40, 10, 10)))
  bad = subprocess.run([sys.executable, '-m', 'iemocap', 'synth', '--out', str(tmp_path),
                        '--sizes', '40,10'], capture_output=True, text=True, check=False)
  assert bad.returncode == 2 and 'three sample counts' in bad.stderr


def test_format_is_the_real_files(small_data_file):
  with open(small_data_file, 'rb') as f:
    blob = f.read()
  # Python 3 reading the way the 2018 code did: bytes keys, nested dicts.
  raw = pickle.loads(blob, encoding='bytes')
  assert sorted(raw) == sorted(e.encode() for e in iemocap.EMOTIONS)
  for emotion in raw.values():
    assert sorted(emotion) == [b'test', b'train', b'valid']
    for split in emotion.values():
      assert sorted(split) == [b'covarep', b'facet', b'glove', b'label']
      n = split[b'label'].shape[0]
      assert split[b'covarep'].shape == (n, 74) and split[b'covarep'].dtype == np.float32
      assert split[b'facet'].shape == (n, 35) and split[b'facet'].dtype == np.float32
      assert split[b'glove'].shape == (n, 20, 300) and split[b'glove'].dtype == np.float32
      assert split[b'label'].shape == (n, 2) and split[b'label'].dtype == np.float32
      np.testing.assert_array_equal(split[b'label'].sum(axis=1), 1)
  assert pickle_io.restricted_load(open(small_data_file, 'rb')) is not None


def test_features_shared_labels_differ_at_realistic_rates():
  raw = synthetic.generate(seed=0, sizes=(2717, 798, 938))
  for split in iemocap.SPLITS:
    first = raw['happy'][split]
    for emotion in iemocap.EMOTIONS:
      for key in ('covarep', 'facet', 'glove'):
        np.testing.assert_array_equal(raw[emotion][split][key], first[key])
    positives = {e: raw[e][split]['label'][:, 1] for e in iemocap.EMOTIONS}
    for emotion, labels in positives.items():
      rate = labels.mean()
      assert 0.10 <= rate <= 0.40, (emotion, split, rate)
      assert abs(rate - synthetic.POSITIVE_RATES[emotion]) < 0.04
    for a in iemocap.EMOTIONS:
      for b in iemocap.EMOTIONS:
        if a != b:
          assert np.mean(positives[a] != positives[b]) > 0.1, (a, b)


def test_nonfinite_values_sprinkled_like_covarep():
  raw = synthetic.generate(seed=0, sizes=(2717, 798, 938))
  covarep = np.concatenate([raw['sad'][s]['covarep'] for s in iemocap.SPLITS])
  assert np.isnan(covarep).sum() > 10 and np.isposinf(covarep).sum() > 0
  assert np.isneginf(covarep).sum() > 0
  assert np.mean(~np.isfinite(covarep)) < 1e-3
  facet = np.concatenate([raw['sad'][s]['facet'] for s in iemocap.SPLITS])
  assert np.isnan(facet).sum() > 0
  glove = raw['sad']['train']['glove']
  assert np.isfinite(glove).all()
  # Short utterances are zero-padded in front, as in the processed GloVe sequences.
  padded = (np.abs(glove).sum(axis=2) == 0)
  assert padded[:, 0].mean() > 0.3 and not padded[:, -1].any()


def test_default_path_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv('LMF_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(synthetic, 'DEFAULT_SIZES', (20, 6, 6))
  path = synthetic.default_path()
  assert path.startswith(str(tmp_path)) and synthetic.describe(path)['seed'] == 0
  stamp = (tmp_path / path).stat().st_mtime_ns
  assert synthetic.default_path() == path
  assert (tmp_path / path).stat().st_mtime_ns == stamp


def test_synth_never_overwrites_a_data_file_and_marks_only_its_own(tmp_path):
  real = tmp_path / 'iemocap.pkl'
  real.write_bytes(b'the licensed file')
  result = subprocess.run([sys.executable, '-m', 'iemocap', 'synth', '--out', str(tmp_path),
                           '--sizes', '10,4,4'], capture_output=True, text=True, check=False)
  assert result.returncode == 2 and 'exists' in result.stderr and '--overwrite' in result.stderr
  assert real.read_bytes() == b'the licensed file'
  path = synthetic.write(tmp_path, sizes=(10, 4, 4), overwrite=True)
  assert synthetic.describe(path)['seed'] == 0
  with open(path, 'ab') as f:  # another file in its place (here: the same one, changed)
    f.write(b'more')
  assert synthetic.describe(path) is None


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'iemocap', *args], capture_output=True, text=True,
                        check=False)


def test_convert_reads_the_pickle_even_beside_an_npz(tmp_path):
  synthetic.write(tmp_path, sizes=(10, 4, 4))
  assert _cli('convert', str(tmp_path)).returncode == 0
  again = _cli('convert', str(tmp_path))  # finds iemocap.npz there, as synth finds iemocap.pkl
  assert again.returncode == 2 and 'exists' in again.stderr and '--overwrite' in again.stderr
  result = _cli('convert', str(tmp_path), '--overwrite')
  assert result.returncode == 0, result.stderr
  assert synthetic.describe(tmp_path / 'iemocap.npz')['seed'] == 0


def test_bytes_of_a_seed_are_unchanged():
  """VERSION guards these: a change here needs a bump (see its comment)."""
  blob = pickle_io.py2_dumps(synthetic.generate(seed=4, sizes=(40, 10, 10)))
  assert hashlib.sha256(blob).hexdigest() == (
      '693d60261b222c9281a0aaafad71d0a71532238a6521ca4500a1a79bd2c9623b')


@pytest.mark.parametrize('seed, sizes', [(0, (2, 2, 2)), (0, (10, 4, 4)), (3, (40, 10, 10))])
def test_small_sets_hold_both_classes_in_every_split(tmp_path, seed, sizes):
  # These drew one class in some split before; the loader refuses that.
  path = synthetic.write(tmp_path, seed, sizes)
  for emotion in iemocap.EMOTIONS:
    dataset = iemocap.load(path, emotion)
    for split in iemocap.SPLITS:
      assert set(dataset.split(split).label) == {0, 1}, (emotion, split)


@pytest.mark.parametrize('content', [
    b'{not json', b'[1, 2]', b'\xff\xfe', b'{}', b'{"bytes": "12", "seed": "x"}',
    json.dumps({'generator': 'iemocap.synthetic', 'version': 1, 'seed': True, 'sizes': [2, 2, 2],
                'bytes': 1}).encode(),
    None,  # a directory in its place
])
def test_a_damaged_marker_is_one_line_not_real_data(tmp_path, content):
  path = synthetic.write(tmp_path, sizes=(10, 4, 4))
  marker = tmp_path / ('iemocap.pkl' + synthetic.MARKER_SUFFIX)
  marker.unlink()
  if content is None:
    marker.mkdir()
  else:
    marker.write_bytes(content)
  with pytest.raises(iemocap.DataError, match='synthetic-data marker .* delete it if .* is real '
                     'data, or write the synthetic set again'):
    synthetic.describe(path)
  for command in (('info', str(tmp_path)), ('convert', str(tmp_path))):
    result = _cli(*command)
    assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.startswith('error: synthetic-data marker ')
  assert not (tmp_path / 'iemocap.npz').exists()


def test_default_set_with_a_damaged_marker_is_generated_again(tmp_path, monkeypatch):
  monkeypatch.setenv('LMF_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(synthetic, 'DEFAULT_SIZES', (20, 6, 6))
  path = synthetic.default_path()
  with open(path + synthetic.MARKER_SUFFIX, 'w', encoding='utf-8') as f:
    f.write('{truncated')
  assert synthetic.default_path() == path and synthetic.describe(path)['seed'] == 0


def test_synth_into_an_unwritable_place_is_one_line(tmp_path):
  (tmp_path / 'a_file').write_text('')
  result = _cli('synth', '--out', str(tmp_path / 'a_file'), '--sizes', '10,4,4')
  assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr
  assert 'cannot write' in result.stderr and 'a part of its directory is a file' in result.stderr

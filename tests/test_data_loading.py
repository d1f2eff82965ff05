"""Loading the 2018 iemocap.pkl: Python-2 format, safety, validation, scrubbing, npz."""

import io
import os
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest

import iemocap
from iemocap import data as data_lib
from iemocap import pickle_io


def _split(n, rng, label_rows=None):
  label = label_rows if label_rows is not None else np.eye(2)[rng.integers(0, 2, n)]
  return {'covarep': rng.normal(size=(n, 74)), 'facet': rng.normal(size=(n, 35)),
          'glove': rng.normal(size=(n, 20, 300)).astype(np.float32), 'label': label}


def _raw(rng=None, sizes=(6, 4, 4)):
  rng = rng or np.random.default_rng(0)
  splits = {name: _split(n, rng) for name, n in zip(iemocap.SPLITS, sizes)}
  return {emotion: splits for emotion in iemocap.EMOTIONS}


def _write(tmp_path, raw, name='iemocap.pkl'):
  path = tmp_path / name
  path.write_bytes(pickle_io.py2_dumps(raw))
  return str(path)


def _opcodes(blob):
  return [(op.name, arg) for op, arg, _ in pickletools.genops(blob)]


def test_python2_pickle_opcodes_are_those_of_the_real_file():
  blob = pickle_io.py2_dumps(_raw())
  ops = _opcodes(blob)
  assert ops[0] == ('PROTO', 2)
  names = {name for name, _ in ops}
  assert 'SHORT_BINSTRING' in names and 'BINSTRING' in names  # keys, raw array bytes
  assert not names & {'BINUNICODE', 'SHORT_BINUNICODE', 'BINBYTES', 'SHORT_BINBYTES'}
  assert ('GLOBAL', 'numpy.core.multiarray _reconstruct') in ops
  assert ('GLOBAL', 'numpy dtype') in ops
  # What Python 3 gives the 2018 code: bytes keys under encoding='bytes'.
  plain = pickle.loads(blob, encoding='bytes')
  assert set(plain) == {e.encode() for e in iemocap.EMOTIONS}
  assert set(plain[b'sad'][b'train']) == {b'covarep', b'facet', b'glove', b'label'}


def test_loads_python2_file_and_returns_float32_and_class_ids(tmp_path):
  raw = _raw()
  path = _write(tmp_path, raw)
  dataset = iemocap.load(path, 'sad')
  assert dataset.emotion == 'sad'
  train = dataset.train
  assert train.audio.dtype == np.float32 and train.audio.shape == (6, 74)
  assert train.visual.shape == (6, 35) and train.text.shape == (6, 20, 300)
  assert train.label.dtype == np.int64
  np.testing.assert_array_equal(train.label, np.argmax(raw['sad']['train']['label'], axis=1))
  np.testing.assert_allclose(train.audio, raw['sad']['train']['covarep'].astype(np.float32))
  assert dataset.input_dims == (74, 35, 300)


def test_directory_and_file_paths_and_emotion_spellings(tmp_path):
  _write(tmp_path, _raw())
  for spelling in ('sad', "b'sad'", '"b\'sad\'"', b'sad', 'SAD', 'bsad'):
    assert iemocap.load(str(tmp_path), spelling).emotion == 'sad'


def test_python3_pickle_with_bytes_keys_loads(tmp_path):
  raw = _raw()
  as_bytes = {e.encode(): {s.encode(): {m.encode(): a for m, a in mods.items()}
                           for s, mods in splits.items()} for e, splits in raw.items()}
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(pickle.dumps(as_bytes, protocol=4))
  assert iemocap.load(str(path), 'happy').test.n == 4


def test_python3_pickle_with_str_keys_loads(tmp_path):
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(pickle.dumps(_raw(), protocol=2))
  assert iemocap.load(str(path), 'angry').valid.n == 4


class _RunsCommand:
  """Pickles as a call to os.system: what a hostile data file would do."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
  marker = tmp_path / 'pwned'
  raw = _raw()
  raw['sad']['train']['covarep'] = _RunsCommand(f'touch {marker}')
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(pickle.dumps(raw, protocol=2))
  with pytest.raises(iemocap.DataError, match=r'refusing to load global posix\.system'):
    iemocap.load(str(path), 'sad')
  assert not marker.exists()


def test_hostile_pickle_in_python2_opcodes_is_refused(tmp_path):
  marker = tmp_path / 'pwned2'
  blob = (b'\x80\x02cbuiltins\neval\nU\x0a__import__q\x00\x85R.')
  with pytest.raises(pickle_io.UnsafePickleError, match='builtins.eval'):
    pickle_io.restricted_load(io.BytesIO(blob))
  blob = b'\x80\x02csubprocess\ncall\n]U\x05touchq\x00a\x85R.'
  with pytest.raises(pickle_io.UnsafePickleError, match='subprocess.call'):
    pickle_io.restricted_load(io.BytesIO(blob))
  assert not marker.exists()


@pytest.mark.parametrize('mutate, message', [
    (lambda r: r.pop('sad'), r"emotion 'sad' missing .*; the file has: angry, happy, neutral"),
    (lambda r: r.__setitem__('sad', {k: v for k, v in r['sad'].items() if k != 'valid'}),
     r"split 'valid' missing for sad .*the file has: test, train"),
    (lambda r: r['sad']['train'].pop('facet'),
     r"modality 'facet' missing \(sad/train\); the file has: covarep, glove, label"),
    (lambda r: r['sad']['train'].__setitem__('covarep', np.zeros((6, 74, 1))),
     r'covarep \(audio\) \(sad/train\) has rank 3'),
    (lambda r: r['sad']['train'].__setitem__('covarep', np.zeros((6, 70))),
     r'covarep \(audio\) \(sad/train\) has shape \(6, 70\): dimension 1 should be 74'),
    (lambda r: r['sad']['train'].__setitem__('glove', np.zeros((6, 20, 200))),
     r'glove \(text\) \(sad/train\) has shape \(6, 20, 200\): dimension 2 should be 300'),
    (lambda r: r['sad']['train'].__setitem__('facet', np.zeros((5, 35))),
     r'modalities \(sad/train\) have different sample counts \(covarep 6, facet 5'),
    (lambda r: r['sad']['train'].__setitem__('label', np.full((6, 2), 0.5)),
     r'label \(sad/train\) is not one-hot'),
    (lambda r: r['sad']['train'].__setitem__('label', np.array([0, 1, 2, 0, 1, 0])),
     r'label \(sad/train\) is not binary'),
    (lambda r: r['sad']['train'].__setitem__('label', np.zeros((6, 3))),
     r'label \(sad/train\) has shape \(6, 3\)'),
    (lambda r: r['sad'].__setitem__('test', _split(0, np.random.default_rng(1))),
     r'split \(sad/test\) is empty'),
    (lambda r: r['sad']['test'].__setitem__('glove', np.zeros((4, 15, 300))),
     r'glove \(sad\) has per-sample shape \(15, 300\) in test but \(20, 300\) in train'),
    (lambda r: r['sad']['train']['glove'].__setitem__((0, 0, 0), np.inf),
     r'glove \(text\) \(sad/train\) has 1 NaN/inf values'),
    (lambda r: r['sad']['train'].__setitem__('covarep', np.array([b'x'] * 6)),
     r'covarep \(audio\) \(sad/train\) is |S1, not a real-valued numeric array'),
])
def test_validation_errors_are_one_clear_line(tmp_path, mutate, message):
  raw = _raw()
  raw['sad'] = {s: dict(m) for s, m in raw['sad'].items()}
  raw['sad']['train']['glove'] = raw['sad']['train']['glove'].copy()
  mutate(raw)
  path = _write(tmp_path, raw)
  with pytest.raises(iemocap.DataError, match=message) as error:
    iemocap.load(path, 'sad')
  assert '\n' not in str(error.value)


def test_missing_truncated_and_non_pickle_files(tmp_path):
  with pytest.raises(iemocap.DataError, match='does not exist'):
    iemocap.load(str(tmp_path / 'nope.pkl'), 'sad')
  with pytest.raises(iemocap.DataError, match='no iemocap.pkl or iemocap.npz in directory'):
    iemocap.load(str(tmp_path), 'sad')
  blob = pickle_io.py2_dumps(_raw())
  truncated = tmp_path / 'truncated.pkl'
  truncated.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(iemocap.DataError, match='truncated'):
    iemocap.load(str(truncated), 'sad')
  text = tmp_path / 'notes.pkl'
  text.write_text('this is not a pickle\n')
  with pytest.raises(iemocap.DataError, match='not a readable IEMOCAP pickle'):
    iemocap.load(str(text), 'sad')
  listing = tmp_path / 'list.pkl'
  listing.write_bytes(pickle.dumps([1, 2, 3]))
  with pytest.raises(iemocap.DataError, match='holds a list, not the dict of emotions'):
    iemocap.load(str(listing), 'sad')


def test_unknown_emotion_and_split(tmp_path):
  path = _write(tmp_path, _raw())
  with pytest.raises(iemocap.DataError, match="unknown emotion 'joy': choose one of happy"):
    iemocap.load(path, 'joy')
  with pytest.raises(iemocap.DataError, match="unknown split 'dev'"):
    iemocap.load(path, 'sad').split('dev')


def test_nan_and_inf_in_audio_and_visual_are_zeroed_and_counted(tmp_path):
  raw = _raw()
  train = dict(raw['sad']['train'])
  covarep = train['covarep'].copy()
  covarep[0, 0], covarep[1, 5], covarep[2, 7] = np.nan, np.inf, -np.inf
  facet = train['facet'].copy()
  facet[3, 3] = np.nan
  train.update(covarep=covarep, facet=facet)
  raw['sad'] = dict(raw['sad'], train=train)
  split = iemocap.load(_write(tmp_path, raw), 'sad').train
  assert split.nonfinite_replaced == 4
  assert np.isfinite(split.audio).all() and np.isfinite(split.visual).all()
  assert split.audio[0, 0] == 0 and split.audio[1, 5] == 0 and split.audio[2, 7] == 0
  assert split.visual[3, 3] == 0
  np.testing.assert_allclose(split.audio[4], covarep[4].astype(np.float32))


def test_npz_conversion_round_trip_and_dedup(tmp_path):
  raw = _raw()
  raw['neutral'] = {s: dict(m) for s, m in raw['neutral'].items()}
  raw['neutral']['train']['covarep'] = raw['neutral']['train']['covarep'] + 1  # differs
  pkl = _write(tmp_path, raw)
  out = tmp_path / 'iemocap.npz'
  data_lib.write_npz(data_lib.read_raw(pkl), str(out))
  with np.load(out) as npz:
    names = set(npz.files)
  assert 'train/covarep' in names and 'sad/train/covarep' not in names
  assert 'neutral/train/covarep' in names and 'sad/train/label' in names
  for emotion in iemocap.EMOTIONS:
    from_pkl, from_npz = iemocap.load(pkl, emotion), iemocap.load(str(out), emotion)
    for split in iemocap.SPLITS:
      for field in ('audio', 'visual', 'text', 'label'):
        np.testing.assert_array_equal(getattr(from_pkl.split(split), field),
                                      getattr(from_npz.split(split), field))
  # A directory with both prefers the npz.
  assert iemocap.load(str(tmp_path), 'sad').path.endswith('.npz')


def test_npz_never_unpickles(tmp_path):
  path = tmp_path / 'iemocap.npz'
  np.savez(path, **{'train/covarep': np.array([_RunsCommand('true')], dtype=object)})
  with pytest.raises(iemocap.DataError, match='not a readable npz'):
    iemocap.load(str(path), 'sad')


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'iemocap', *args], capture_output=True,
                        text=True, check=False)


def test_info_command_json(small_data_dir):
  import json  # pylint: disable=import-outside-toplevel
  result = _cli('info', small_data_dir, '--emotion', "b'sad'", '--json')
  assert result.returncode == 0, result.stderr
  record = json.loads(result.stdout)
  assert record['emotion'] == 'sad' and record['synthetic'] is True
  train = record['splits']['train']
  assert train['n'] == 160 and train['audio_dim'] == 74 and train['visual_dim'] == 35
  assert train['text_shape'] == [20, 300]
  dataset = iemocap.load(small_data_dir, 'sad')
  assert train['positive_rate'] == round(dataset.train.positive_rate, 4)
  assert train['nonfinite_replaced'] == dataset.train.nonfinite_replaced
  everything = json.loads(_cli('info', small_data_dir, '--json').stdout)
  assert [r['emotion'] for r in everything] == list(iemocap.EMOTIONS)


def test_commands_fail_with_one_line_and_exit_2(tmp_path):
  bad = tmp_path / 'iemocap.pkl'
  bad.write_bytes(b'\x80\x02cos\nsystem\nU\x04trueq\x00\x85R.')
  result = _cli('info', str(bad))
  assert result.returncode == 2
  assert result.stderr.strip().count('\n') == 0
  assert result.stderr.startswith('error: ') and 'os.system' in result.stderr
  assert 'Traceback' not in result.stderr
  missing = _cli('convert', str(tmp_path / 'absent'))
  assert missing.returncode == 2 and 'does not exist' in missing.stderr


def test_convert_command_writes_npz_beside_the_pickle(tmp_path):
  assert _cli('synth', '--out', str(tmp_path), '--sizes', '10,4,4').returncode == 0
  result = _cli('convert', str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'iemocap.npz').exists()
  info = _cli('info', str(tmp_path / 'iemocap.npz'), '--emotion', 'happy', '--json')
  assert '"synthetic": true' in info.stdout

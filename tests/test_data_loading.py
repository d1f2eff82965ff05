"""Loading the 2018 iemocap.pkl: Python-2 format, safety, validation, scrubbing, npz."""

import io
import json
import os
import pickle
import pickletools
import re
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from iemocap import data as data_lib
from iemocap import pickle_io
import iemocap


def _split(n, rng, label_rows=None):
  # Both classes in every split of 2 or more: the loader refuses one.
  label = label_rows if label_rows is not None else np.eye(2)[rng.permutation(np.arange(n) % 2)]
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
    (lambda r: r['sad']['train'].__setitem__('label', [[1, 0], [0, 1]] * 3),
     r'label \(sad/train\) is list, not an array: expected a numeric one-hot \(N, 2\)'),
    (lambda r: [r['sad'][s].__setitem__('glove', np.zeros((n, 0, 300), np.float32))
                for s, n in (('train', 6), ('valid', 4), ('test', 4))],
     r'glove \(text\) \(sad/train\) has 0 time steps'),
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
  empty = tmp_path / 'empty.pkl'
  empty.write_bytes(b'')
  with pytest.raises(iemocap.DataError, match='empty.pkl is empty'):
    iemocap.load(str(empty), 'sad')
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


def test_nan_and_inf_in_audio_and_visual_are_zeroed_and_counted_per_modality(tmp_path):
  raw = _raw()
  train = dict(raw['sad']['train'])
  covarep = train['covarep'].copy()
  covarep[0, 0], covarep[1, 5], covarep[2, 7] = np.nan, np.inf, -np.inf
  facet = train['facet'].copy()
  facet[3, 3] = np.nan
  train.update(covarep=covarep, facet=facet)
  raw['sad'] = dict(raw['sad'], train=train)
  dataset = iemocap.load(_write(tmp_path, raw), 'sad')
  split = dataset.train
  assert split.nonfinite_replaced == 4
  assert split.audio_replaced == data_lib.Replaced(nan=1, inf=2)
  assert split.visual_replaced == data_lib.Replaced(nan=1, inf=0)
  assert dataset.replaced_lines() == [
      'sad/train: replaced 1 NaN and 2 inf in covarep, 1 NaN and 0 inf in facet',
      'sad/valid: replaced 0 in covarep, 0 in facet',
      'sad/test: replaced 0 in covarep, 0 in facet']
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
  with pytest.raises(iemocap.DataError, match=r'member train/covarep\.npy holds Python objects'):
    iemocap.load(str(path), 'sad')


def _cli(*args, timeout=None):
  return subprocess.run([sys.executable, '-m', 'iemocap', *args], capture_output=True,
                        text=True, check=False, timeout=timeout)


def _refused(result, *fragments):
  """The command failed as every command should: exit 2, one `error:` line naming the problem."""
  assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, (fragment, result.stderr)


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
  assert train['replaced']['covarep'] == {'nan': dataset.train.audio_replaced.nan,
                                          'inf': dataset.train.audio_replaced.inf}
  assert train['replaced_text'] == dataset.train.replaced_text()
  text = _cli('info', small_data_dir, '--emotion', 'sad').stdout
  for line in dataset.replaced_lines():
    assert line.split(': ', 1)[1] in text
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


def _with_label(label, split='train'):
  raw = _raw()
  raw['sad'] = dict(raw['sad'], **{split: dict(raw['sad'][split], label=label)})
  return raw


@pytest.mark.parametrize('label, dtype', [
    (np.eye(2)[[0, 1, 0, 1, 0, 1]].astype(object), 'object'),
    (np.array([['1', '0'], ['0', '1']] * 3), '<U1'),
    (np.array([b'1', b'0'] * 3), '|S1'),
])
def test_label_arrays_of_object_or_string_dtype_are_refused(tmp_path, label, dtype):
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(pickle.dumps(_with_label(label), protocol=2))  # py2_dumps refuses objects
  message = (rf'label \(sad/train\) has dtype {re.escape(dtype)}: expected a numeric one-hot '
             r'\(N, 2\) array')
  with pytest.raises(iemocap.DataError, match=message):
    iemocap.load(str(path), 'sad')
  _refused(_cli('info', str(path)), f'has dtype {dtype}')


def test_string_labels_in_an_npz_are_refused(tmp_path):
  path = tmp_path / 'iemocap.npz'
  flat = {f'sad/{s}/{k}': a for s, m in _raw()['sad'].items() for k, a in m.items()}
  flat['sad/test/label'] = np.array([['0', '1'], ['1', '0']] * 2)
  np.savez(path, **flat)
  with pytest.raises(iemocap.DataError, match=r'label \(sad/test\) has dtype <U1'):
    iemocap.load(str(path), 'sad')


@pytest.mark.parametrize('split', iemocap.SPLITS)
@pytest.mark.parametrize('present', [0, 1])
def test_a_split_with_one_class_is_refused(tmp_path, split, present):
  n = 6 if split == 'train' else 4
  path = _write(tmp_path, _with_label(np.eye(2)[[present] * n], split))
  absent_or_present = 'present' if present else 'absent'
  message = (rf'label \(sad/{split}\) holds one class only: all {n} samples are class {present} '
             rf'\(emotion {absent_or_present}\)')
  with pytest.raises(iemocap.DataError, match=message) as error:
    iemocap.load(path, 'sad')
  assert '\n' not in str(error.value)


def _npz_with_member(tmp_path, name, blob):
  """The npz `convert` writes for _raw(), with member `name` (if any) replaced by raw bytes."""
  path = tmp_path / 'iemocap.npz'
  with zipfile.ZipFile(path, 'w') as archive:
    for emotion in iemocap.EMOTIONS:
      for split, modalities in _raw()[emotion].items():
        for key, array in modalities.items():
          member = f'{emotion}/{split}/{key}'
          buffer = io.BytesIO()
          np.lib.format.write_array(buffer, array)
          archive.writestr(member + '.npy', blob if member == name else buffer.getvalue())
  return str(path)


def test_npz_header_declaring_an_impossible_shape_is_refused_before_allocating(tmp_path):
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {'descr': '<f8', 'fortran_order': False, 'shape': (10**12, 74)})
  path = _npz_with_member(tmp_path, 'sad/train/covarep', header.getvalue() + bytes(64))
  message = (r'member sad/train/covarep\.npy declares shape \(1000000000000, 74\) of float64 '
             r'\(592000000000000 bytes\) but the file holds only 64 bytes for it: the file is '
             r'corrupt or truncated')
  with pytest.raises(iemocap.DataError, match=message):
    iemocap.load(path, 'sad')
  _refused(_cli('info', path), 'declares shape (1000000000000, 74)')


def test_truncated_npz_member_truncated_archive_and_non_zip_file(tmp_path):
  whole = io.BytesIO()
  np.lib.format.write_array(whole, _raw()['sad']['train']['glove'])
  cut = whole.getvalue()[:len(whole.getvalue()) // 2]
  path = _npz_with_member(tmp_path, 'sad/train/glove', cut)
  with pytest.raises(iemocap.DataError, match=r'member sad/train/glove\.npy declares shape '
                     r'\(6, 20, 300\) of float32 \(144000 bytes\) but the file holds only'):
    iemocap.load(path, 'sad')
  blob = (tmp_path / 'iemocap.npz').read_bytes()
  (tmp_path / 'iemocap.npz').write_bytes(blob[:len(blob) // 2])
  with pytest.raises(iemocap.DataError, match=r'is not a readable npz \(zip\) archive'):
    iemocap.load(path, 'sad')
  (tmp_path / 'iemocap.npz').write_text('hello\n')  # numpy would try it as a pickle
  with pytest.raises(iemocap.DataError, match=r'is not a readable npz \(zip\) archive'):
    iemocap.load(path, 'sad')


def test_npz_member_with_an_unknown_compression_method_is_one_line(tmp_path):
  path = _npz_with_member(tmp_path, None, None)  # the npz as written
  blob = bytearray((tmp_path / 'iemocap.npz').read_bytes())
  for signature, offset in ((b'PK\x03\x04', 8), (b'PK\x01\x02', 10)):  # local, central headers
    for match in re.finditer(re.escape(signature), bytes(blob)):
      blob[match.start() + offset:match.start() + offset + 2] = (99).to_bytes(2, 'little')
  (tmp_path / 'iemocap.npz').write_bytes(bytes(blob))
  _refused(_cli('info', path), 'compression method 99')


def test_pickle_cannot_allocate_arrays_it_does_not_store(tmp_path):
  # numpy.ndarray((10**10,)): 80 GB reserved by a 60-byte file.
  call = b'\x80\x02}X\x03\x00\x00\x00sadcnumpy\nndarray\n\x8a\x05\x00\xe4\x0bT\x02\x85\x85Rs.'
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(call)
  with pytest.raises(iemocap.DataError, match='refusing to call numpy.ndarray'):
    iemocap.load(str(path), 'sad')
  reconstruct = (b'\x80\x02}X\x03\x00\x00\x00sadcnumpy.core.multiarray\n_reconstruct\n'
                 b'cnumpy\nndarray\n\x8a\x05\x00\xe4\x0bT\x02\x85U\x01b\x87Rs.')
  path.write_bytes(reconstruct)
  with pytest.raises(iemocap.DataError, match=r'refusing _reconstruct with shape \(10000000000,\)'):
    iemocap.load(str(path), 'sad')


def test_numpy_warnings_while_unpickling_do_not_reach_the_user(tmp_path):
  # dtype('f8', 0) with align as an int warns in numpy >= 2.4; the file is otherwise sound.
  blob = re.sub(rb'(U\x02f[48]q.)K\x00K\x01\x87', b'\\1K\x00\x86', pickle_io.py2_dumps(_raw()),
                flags=re.DOTALL)
  assert blob != pickle_io.py2_dumps(_raw())
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(blob)
  result = _cli('info', str(path), '--emotion', 'sad')
  assert result.returncode == 0 and result.stderr == '', result.stderr
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    iemocap.load(str(path), 'sad')


def test_values_beyond_float32_are_counted_as_inf_without_a_warning(tmp_path):
  raw = _raw()
  covarep = raw['sad']['train']['covarep'].copy()
  covarep[0, :3] = 1e39
  raw['sad'] = dict(raw['sad'], train=dict(raw['sad']['train'], covarep=covarep))
  path = _write(tmp_path, raw)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    split = iemocap.load(path, 'sad').train
  assert split.audio_replaced == data_lib.Replaced(nan=0, inf=3) and split.audio[0, 0] == 0
  converted = _cli('convert', path)
  assert converted.returncode == 0 and converted.stderr == '', converted.stderr


def test_the_same_emotion_under_str_and_bytes_keys_is_refused(tmp_path):
  raw = _raw()
  raw[b'sad'] = raw['sad']
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(pickle.dumps(raw, protocol=2))
  with pytest.raises(iemocap.DataError, match="emotion 'sad' is stored twice in .*str and a bytes"):
    iemocap.load(str(path), 'sad')


def test_paths_that_are_not_data_files(tmp_path):
  (tmp_path / 'iemocap.pkl').mkdir()  # a directory of directories
  with pytest.raises(iemocap.DataError, match=r'iemocap\.pkl is not a regular file \(a directory'):
    iemocap.load(str(tmp_path), 'sad')
  (tmp_path / 'iemocap.pkl').rmdir()
  (tmp_path / 'iemocap.pkl').symlink_to(tmp_path / 'gone')
  with pytest.raises(iemocap.DataError, match='or a broken link'):
    iemocap.load(str(tmp_path), 'sad')
  fifo = tmp_path / 'fifo.pkl'
  os.mkfifo(fifo)  # reading it would wait forever for a writer
  _refused(_cli('info', str(fifo), timeout=60), 'is not a regular file')
  below_a_file = tmp_path / 'fifo.pkl' / 'iemocap.pkl'
  _refused(_cli('info', str(below_a_file)), 'does not exist')


def test_convert_validates_before_writing_and_leaves_nothing(tmp_path):
  path = tmp_path / 'iemocap.pkl'
  path.write_bytes(pickle.dumps(_with_label(np.eye(2)[[0] * 4], 'test'), protocol=2))
  before = sorted(os.listdir(tmp_path))
  _refused(_cli('convert', str(path)), 'label (sad/test) holds one class only')
  path.write_bytes(pickle.dumps(_with_label(np.array(['1', '0'] * 3)), protocol=2))
  _refused(_cli('convert', str(path), '--out', str(tmp_path / 'out' / 'x.npz')), 'dtype <U1')
  assert sorted(os.listdir(tmp_path)) == before  # no npz, no temporary file, no directory


def test_convert_keeps_an_existing_npz_unless_overwrite(tmp_path):
  path = _write(tmp_path, _raw())
  (tmp_path / 'iemocap.npz').write_bytes(b'an earlier npz')
  _refused(_cli('convert', path), 'iemocap.npz exists', '--overwrite')
  assert (tmp_path / 'iemocap.npz').read_bytes() == b'an earlier npz'
  # A marker left by an earlier synthetic npz must not describe the real one.
  marker = tmp_path / 'iemocap.npz.synthetic.json'
  marker.write_text('{}')
  assert _cli('convert', path, '--overwrite').returncode == 0
  assert iemocap.load(str(tmp_path / 'iemocap.npz'), 'sad').train.n == 6
  assert not marker.exists()


def test_convert_to_an_unwritable_place_is_one_line(tmp_path):
  path = _write(tmp_path, _raw())
  (tmp_path / 'a_file').write_text('')
  _refused(_cli('convert', path, '--out', str(tmp_path / 'a_file' / 'x.npz')),
           'a part of its directory is a file')
  (tmp_path / 'a_dir.npz').mkdir()
  _refused(_cli('convert', path, '--out', str(tmp_path / 'a_dir.npz'), '--overwrite'),
           'cannot write', 'Is a directory')

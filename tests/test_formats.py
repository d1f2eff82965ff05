"""Each released file format detected from its content and loaded from its synthetic stand-in
through the real loaders; hostile variants refused in one line; a target a file does not hold
refused; a MulT IEMOCAP file and the 2018 file of the same numbers give the same Dataset."""

import json
import os
import pickle

import numpy as np
import pytest

from iemocap import csd
from iemocap import data as data_lib
from iemocap import formats
from iemocap import pickle_io
from iemocap import synthetic
from iemocap import synthetic_formats
from iemocap.errors import DataError
import run_helpers

SIZES = (48, 16, 24)
EXPECTED = {  # format: (detected format, set, text shape, label columns)
    'mult-iemocap': ('mult', 'IEMOCAP', (20, 300), None),
    'mult-mosi': ('mult', 'CMU-MOSI', (50, 300), 1),
    'mmsa-mosi': ('mmsa', 'CMU-MOSI', (50, 768), 1),
    'mmsa-sims': ('mmsa', 'CH-SIMS', (39, 768), 4),
    'csd-mosi': ('csd', 'CMU-MOSI', (50, 300), 1),
    'lmf2018-mosi': ('lmf2018-regression', 'CMU-MOSI', (20, 300), 1),
    'lmf2018-pom': ('lmf2018-regression', 'POM', (20, 300), 16),
}


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory):
  directory = tmp_path_factory.mktemp('formats')
  return {fmt: synthetic_formats.write(fmt, directory, 0, SIZES) for fmt in synthetic_formats.FORMATS}


def _inspect(path, *extra):
  result = run_helpers.run_cli('iemocap', 'inspect', path, '--json', *extra)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


@pytest.mark.parametrize('fmt', synthetic_formats.FORMATS)
def test_each_stand_in_is_detected_and_inspected(stand_ins, fmt):
  detected, dataset, text_shape, columns = EXPECTED[fmt]
  report = _inspect(stand_ins[fmt])
  assert (report['format'], report['dataset']) == (detected, dataset)
  assert any('differ from the paper' in note for note in report['notes'])
  if columns is None:
    assert [r['emotion'] for r in report['emotions']] == list(data_lib.EMOTIONS)
    assert report['emotions'][0]['splits']['train']['text_shape'] == list(text_shape)
    return
  for name, n in zip(data_lib.SPLITS, SIZES):
    split = report['splits'][name]
    assert split['n'] == n and split['text']['shape'] == [n, *text_shape]
    assert split['label']['shape'] == [n, columns] and split['label']['dtype'] == 'float32'
  if fmt.startswith('mmsa'):
    assert any('BERT' in note for note in report['notes'])
    assert any('sha256' in note and 'differs' in note for note in report['notes'])


def test_lengths_average_only_real_steps(stand_ins):
  raw = pickle_io.restricted_load(open(stand_ins['mmsa-mosi'], 'rb'))
  loaded = formats.load_regression(formats.read(stand_ins['mmsa-mosi']))
  train = raw['train']
  lengths = np.asarray(train['audio_lengths'])
  expected = [train['audio'][i, :lengths[i]].mean(axis=0) for i in range(SIZES[0])]
  np.testing.assert_allclose(loaded.splits['train'].audio, expected, rtol=1e-5, atol=1e-6)
  assert loaded.splits['train'].ids[0] == 'video0$_$0'


def test_mult_iemocap_equals_the_2018_file_of_the_same_numbers(stand_ins, tmp_path):
  mult = pickle_io.restricted_load(open(stand_ins['mult-iemocap'], 'rb'))
  raw = {}
  for index, emotion in enumerate(('neutral', 'happy', 'sad', 'angry')):
    raw[emotion] = {split: {'covarep': np.mean(mult[split]['audio'], axis=1, dtype=np.float64),
                            'facet': np.mean(mult[split]['vision'], axis=1, dtype=np.float64),
                            'glove': mult[split]['text'],
                            'label': mult[split]['labels'][:, index]}
                    for split in data_lib.SPLITS}
  (tmp_path / 'iemocap.pkl').write_bytes(pickle_io.py2_dumps(raw))
  for emotion in data_lib.EMOTIONS:
    a = formats.load(stand_ins['mult-iemocap'], emotion)
    b = formats.load(tmp_path, emotion)
    for split in data_lib.SPLITS:
      for key, value in a.split(split).arrays().items():
        np.testing.assert_array_equal(value, b.split(split).arrays()[key], err_msg=key)
      assert a.split(split).replaced_text() == b.split(split).replaced_text()
  # And both are the 2018 synthetic set of that seed (the stand-in plants its vectors).
  original = data_lib.build_dataset(synthetic.generate(0, SIZES), 'sad', 'generated')
  sad = formats.load(stand_ins['mult-iemocap'], 'sad')
  np.testing.assert_array_equal(sad.train.label, original.train.label)
  np.testing.assert_allclose(sad.test.audio, original.test.audio, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_jax_trains_on_a_mult_iemocap_file(stand_ins, tmp_path):
  flags = [f'--{k}={v}' for k, v in run_helpers.SMALL.items()]
  result = run_helpers.run_cli('lmf_jax.train', f'--data_path={stand_ins["mult-iemocap"]}',
                               '--emotion=sad', '--epochs=2', f'--workdir={tmp_path / "run"}',
                               *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.load(open(tmp_path / 'run' / 'results.json', encoding='utf-8'))
  assert saved['epochs_run'] == 2


def test_a_target_the_file_does_not_hold_is_one_line(stand_ins, tmp_path):
  result = run_helpers.run_cli('lmf_jax.train', f'--data_path={stand_ins["mult-mosi"]}',
                               '--emotion=sad', f'--workdir={tmp_path / "run"}')
  run_helpers.assert_one_line(result, r'holds CMU-MOSI sentiment regression \(mult format\), '
                              r'whose target is sentiment: pass --emotion=sentiment')
  assert not (tmp_path / 'run').exists()
  for fmt in ('mmsa-sims', 'csd-mosi'):
    with pytest.raises(DataError, match='sentiment regression'):
      formats.load(stand_ins[fmt], 'sad')
  with pytest.raises(DataError, match='POM speaker-trait regression .* target is traits'):
    formats.load(stand_ins['lmf2018-pom'], 'sentiment')
  with pytest.raises(DataError, match='holds IEMOCAP emotions, not sentiment'):
    formats.load(stand_ins['mult-iemocap'], 'sentiment')


def _write(path, obj):
  path.write_bytes(pickle.dumps(obj, protocol=4))
  return str(path)


def _mult(stand_ins):
  return pickle_io.restricted_load(open(stand_ins['mult-mosi'], 'rb'))


def test_hostile_pickles_are_one_line(stand_ins, tmp_path):
  mult = _mult(stand_ins)
  del mult['valid']['labels']
  with pytest.raises(DataError, match='split train holds|labels missing'):
    formats.load_regression(formats.read(_write(tmp_path / 'a.pkl', mult)))
  mult = _mult(stand_ins)
  mult['train']['audio'] = mult['train']['audio'][:, :, 0]
  with pytest.raises(DataError, match=r'audio .*has shape \(48, 50\): expected rank 3'):
    formats.load_regression(formats.read(_write(tmp_path / 'b.pkl', mult)))
  mult = _mult(stand_ins)
  mult['test']['id'] = np.array([{'x': 1}] * SIZES[2], dtype=object)
  with pytest.raises(DataError, match='id .* holds a dict: ids and raw text must be strings'):
    formats.load_regression(formats.read(_write(tmp_path / 'c.pkl', mult)))
  mult = _mult(stand_ins)
  mult['train']['labels'] = np.zeros((SIZES[0], 4, 3), np.float32)
  with pytest.raises(DataError, match=r'labels .*\(48, 4, 3\)'):
    formats.load_regression(formats.read(_write(tmp_path / 'd.pkl', mult)))
  mmsa = pickle_io.restricted_load(open(stand_ins['mmsa-mosi'], 'rb'))
  mmsa['train']['audio_lengths'] = [999] * SIZES[0]
  with pytest.raises(DataError, match=r'audio_lengths .*outside 0\.\.375'):
    formats.load_regression(formats.read(_write(tmp_path / 'e.pkl', mmsa)))
  forbidden = tmp_path / 'f.pkl'
  forbidden.write_bytes(b'\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06'
                        b'system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94.')
  run_helpers.assert_one_line(run_helpers.run_cli('iemocap', 'inspect', str(forbidden)),
                              'refusing to load global os.system')
  with pytest.raises(DataError, match='none of the known layouts'):
    formats.read(_write(tmp_path / 'g.pkl', {s: {'x': np.zeros(2)} for s in data_lib.SPLITS}))


def test_hostile_csd_sets_are_one_line(stand_ins, tmp_path):
  directory = stand_ins['csd-mosi']
  single = os.path.join(directory, 'CMU_MOSI_COVAREP.csd')
  run_helpers.assert_one_line(run_helpers.run_cli('iemocap', 'inspect', single),
                              'an HDF5 file .*pass the directory')
  files = sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith('.csd'))
  without_labels = ','.join(f for f in files if 'Labels' not in f)
  with pytest.raises(DataError, match='no .csd file for labels'):
    formats.read(without_labels)
  truncated = tmp_path / 'set'
  truncated.mkdir()
  for file in files:
    blob = open(file, 'rb').read()
    (truncated / os.path.basename(file)).write_bytes(blob[:len(blob) // 2] if 'COVAREP' in file
                                                     else blob)
  result = run_helpers.run_cli('iemocap', 'inspect', str(truncated))
  run_helpers.assert_one_line(result, 'CMU_MOSI_COVAREP.csd is not a readable HDF5')
  with_folds = formats.load_regression(formats.read(','.join(files)))  # folds.json beside them
  assert [s.n for s in with_folds.splits.values()] == list(SIZES)
  (tmp_path / 'no_folds').mkdir()
  for file in files:
    (tmp_path / 'no_folds' / os.path.basename(file)).write_bytes(open(file, 'rb').read())
  listed = formats.load_regression(formats.read(str(tmp_path / 'no_folds')))
  assert list(listed.splits) == ['all'] and listed.splits['all'].n == sum(SIZES)
  assert csd.FOLDS_NAME in ' '.join(listed.notes)


def test_2018_regression_pickles_are_detected(tmp_path):
  rng = np.random.default_rng(0)
  def split(n, label_dims):
    return {'covarep': rng.normal(size=(n, 74)), 'facet': rng.normal(size=(n, 47)),
            'glove': rng.normal(size=(n, 20, 300)), 'label': rng.normal(size=(n, label_dims))}
  for name, dims, dataset in (('mosi.pkl', 1, 'CMU-MOSI'), ('pom.pkl', 16, 'POM')):
    path = tmp_path / name
    path.write_bytes(pickle_io.py2_dumps({s: split(6, dims) for s in data_lib.SPLITS}))
    source = formats.read(str(path))
    assert (source.format, source.dataset) == (formats.LMF2018_REGRESSION, dataset)
    assert formats.load_regression(source).splits['test'].label.shape == (6, dims)


def test_csd_without_h5py_is_one_line(stand_ins, monkeypatch):
  monkeypatch.setitem(__import__('sys').modules, 'h5py', None)
  with pytest.raises(DataError, match=r'needs h5py: pip install -e \.\[data\]'):
    formats.load_regression(formats.read(stand_ins['csd-mosi']))

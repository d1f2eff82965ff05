"""Regression targets end to end: CMU-MOSI/MOSEI/CH-SIMS sentiment and POM traits from every
file format's stand-in, through both trainers' command lines, populations, evaluate and
predict; the figures against their definitions (scikit-learn, numpy)."""

import csv
import json
import os
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from engine import prediction
from engine import records
from engine import state_dict
from engine.errors import CheckpointError
from flags import definitions
from iemocap import files
from iemocap import formats
from iemocap import metrics
from iemocap import synthetic_formats
from lmf_jax import predict as jax_predict
from lmf_jax import train as jax_train
import run_helpers

SIZES = (64, 24, 32)
SMALL = [f'--{k}={v}' for k, v in run_helpers.SMALL.items()]


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory):
  directory = tmp_path_factory.mktemp('regression')
  return {fmt: synthetic_formats.write(fmt, directory, 3, SIZES)
          for fmt in synthetic_formats.FORMATS if fmt != 'mult-iemocap'}


COMMAND_TESTS = {  # the commands of each test that starts its command lines with the module
    'mosi': 'test_a_mult_mosi_file_trains_sentiment_with_the_jax_command',
    'pom': 'test_a_2018_pom_file_trains_every_trait_with_the_torch_command',
    'populations': 'test_populations_of_sentiment_models_in_both_backends',
    'output_dim': 'test_config_takes_the_target_and_outputs_from_the_file',
}


@pytest.fixture(scope='module', autouse=True)
def commands(request, stand_ins, tmp_path_factory):
  """This module's command lines, started together when it starts (each spends most of its time
  on one core: imports, compilation), beside the in-process tests; the tests that read them come
  last. {name: (workdir, run_helpers.Started)}, populations: a pair of them. torch runs on one
  thread: its two-thread pool stalls whenever another process holds a core."""
  directory = tmp_path_factory.mktemp('regression-runs')
  one_thread = {'env': {**os.environ, 'OMP_NUM_THREADS': '1'}}
  python = [sys.executable, '-m']
  common = ['--epochs=2', '--num_seeds=2', *SMALL]
  planned = {
      'mosi': [(directory / 'mosi', [*python, 'lmf_jax.train',
                                     f'--data_path={stand_ins["mult-mosi"]}',
                                     f'--workdir={directory / "mosi"}', '--epochs=3', *SMALL], {})],
      'pom': [(directory / 'pom', [*python, 'lmf_torch_npu.train',
                                   f'--data_path={stand_ins["lmf2018-pom"]}',
                                   f'--workdir={directory / "pom"}', '--epochs=2', '--device=cpu',
                                   *SMALL], one_thread)],
      'populations': [
          (directory / 'jax', [*python, 'lmf_jax.train', f'--data_path={stand_ins["mmsa-sims"]}',
                               f'--workdir={directory / "jax"}', *common], {}),
          (directory / 'torch', [*python, 'lmf_torch_npu.train',
                                 f'--data_path={stand_ins["csd-mosi"]}',
                                 f'--workdir={directory / "torch"}', '--ray_address=none',
                                 '--device=cpu', *common], one_thread)],
      'output_dim': [(directory / 'run', [*python, 'lmf_jax.train',
                                          f'--data_path={stand_ins["lmf2018-pom"]}',
                                          '--output_dim=3', f'--workdir={directory / "run"}'],
                      {})],
  }
  started = {}
  try:
    for name, runs in planned.items():
      if run_helpers.selected(request, COMMAND_TESTS[name]):
        started[name] = [(workdir, run_helpers.Started(command, **options))
                         for workdir, command, options in runs]
    yield {name: runs if name == 'populations' else runs[0] for name, runs in started.items()}
  finally:
    for runs in started.values():
      for _, process in runs:
        process.kill()


def test_regression_figures_follow_their_definitions():
  rng = np.random.default_rng(0)
  labels = np.round(rng.uniform(-3, 3, 200) * 2) / 2  # MOSI-like: halves, zeros among them
  labels[:7] = 0.0
  outputs = labels + rng.normal(0, 0.8, 200)
  got = metrics.regression_metrics(labels[:, None], outputs[:, None], 'CMU-MOSI')
  assert got['mae'] == pytest.approx(sk.mean_absolute_error(labels, outputs), rel=1e-12)
  assert got['corr'] == pytest.approx(np.corrcoef(labels, outputs)[0, 1], rel=1e-12)
  assert got['acc2_has0'] == sk.accuracy_score(labels >= 0, outputs >= 0)
  assert got['f1_has0'] == pytest.approx(sk.f1_score(labels >= 0, outputs >= 0,
                                                     average='weighted'), abs=1e-15)
  kept = labels != 0
  assert got['acc2_non0'] == sk.accuracy_score(labels[kept] > 0, outputs[kept] > 0)
  assert got['f1_non0'] == pytest.approx(sk.f1_score(labels[kept] > 0, outputs[kept] > 0,
                                                     average='weighted'), abs=1e-15)
  assert got['acc2_has0'] != got['acc2_non0']  # the zeros make the conventions differ here
  seven = np.round(np.clip(outputs, -3, 3)) == np.round(np.clip(labels, -3, 3))
  assert got['acc7'] == np.mean(seven)
  assert all(got[key] is None for key in metrics.SIMS_FIGURES)  # CH-SIMS's figures
  sims_labels = (np.round(rng.uniform(-1, 1, 200) * 5) / 5).astype(np.float32)  # fifths, as SIMS
  sims_outputs = (sims_labels + rng.normal(0, 0.3, 200)).astype(np.float32)
  sims = metrics.regression_metrics(sims_labels[:, None], sims_outputs[:, None], 'CH-SIMS')
  assert sims['acc7'] is None
  def classes(v, bounds):  # noqa: E306  the bound itself belongs to the class below it
    v = np.clip(v, -1, 1)
    return sum((v > np.float32(b)).astype(int) for b in bounds)
  for key, bounds in (('acc3', (-0.1, 0.1)), ('acc5', (-0.7, -0.1, 0.1, 0.7)),
                      ('acc2_neg0', (0,))):
    assert sims[key] == np.mean(classes(sims_labels, bounds) == classes(sims_outputs, bounds))
  assert 0 < sims['acc5'] < sims['acc3'] < sims['acc2_neg0'] < 1
  # MMSA's SIMS binary figures count a zero label negative: here unlike the has-0 convention.
  assert sims['f1_neg0'] == pytest.approx(sk.f1_score(sims_labels > 0, sims_outputs > 0,
                                                      average='weighted'), abs=1e-15)
  assert (sims_labels == 0).any() and sims['acc2_neg0'] != sims['acc2_has0']
  # A NaN output is wrong, whether the output it replaces was right or wrong.
  wrong = np.flatnonzero((sims_labels > 0) != (sims_outputs > 0))[0]
  for index in (wrong, np.flatnonzero((sims_labels > 0) == (sims_outputs > 0))[0]):
    one_nan = np.where(np.arange(200) == index, np.nan, sims_outputs)
    expected = np.where(np.arange(200) == index, sims_labels <= 0, one_nan > 0)
    nan_output = metrics.regression_metrics(sims_labels[:, None], one_nan[:, None], 'CH-SIMS')
    assert nan_output['f1_neg0'] == pytest.approx(sk.f1_score(sims_labels > 0, expected,
                                                              average='weighted'), abs=1e-15)
    assert nan_output['acc2_neg0'] == np.mean((sims_labels > 0) == expected)
  assert metrics.sims_classes(np.float32([-0.7, -0.1, 0.1, 0.7, 5, np.nan]),
                              (-0.7, -0.1, 0.1, 0.7)).tolist() == [0, 1, 2, 3, 4, -1]
  assert metrics.regression_metrics(labels[:, None], np.zeros((200, 1)))['corr'] is None
  traits = metrics.regression_metrics(np.stack([labels, -labels], 1),
                                      np.stack([outputs, labels], 1))
  assert traits['mae_per_target'] == pytest.approx([got['mae'], 2 * np.mean(np.abs(labels))])
  assert traits['corr_per_target'] == pytest.approx([got['corr'], -1.0])
  assert traits['acc2_has0'] is None and traits['acc7'] is None
  baseline = metrics.baseline_figures('regression', [[1.0], [2.0], [10.0]], [[0.0], [4.0]])
  assert baseline == {'baseline_mae': pytest.approx(2.0)}  # the training median, 2


def _result(workdir):
  return files.read_json(os.path.join(workdir, records.RESULTS_JSON))


@pytest.mark.slow
@pytest.mark.parametrize('fmt', ['mmsa-mosi', 'lmf2018-mosi'])
def test_the_other_sentiment_files_train_through_the_api(stand_ins, fmt, tmp_path):
  flag_values = _flag_values(f'--data_path={stand_ins[fmt]}', f'--workdir={tmp_path}',
                             '--epochs=2', *SMALL)
  config = definitions.config_from_flags(flag_values)
  assert (config.emotion, config.output_dim) == ('sentiment', 1)
  record = jax_train.train_and_evaluate(config)
  assert record['task'] == 'regression' and record['acc7'] is not None
  assert record['baseline_mae'] > 0


def _flag_values(*argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  definitions.define_training_flags(values)
  values(['test', *argv])
  return values


def test_config_takes_the_target_and_outputs_from_the_file(stand_ins, commands,
                                                           tmp_path):
  pom = definitions.config_from_flags(_flag_values(f'--data_path={stand_ins["lmf2018-pom"]}'))
  assert (pom.emotion, pom.output_dim, pom.task) == ('traits', 16, 'regression')
  default = definitions.config_from_flags(_flag_values('--emotion=traits'))
  assert default.output_dim == synthetic_formats.POM_TRAITS  # the synthetic POM stand-in's
  iemocap = definitions.config_from_flags(_flag_values())
  assert (iemocap.emotion, iemocap.output_dim) == ('neutral', 2)
  csv_path = tmp_path / 'param_data.csv'
  csv_path.write_text('\n'.join(['8,4,64,0.3,0.1,0.15,0.003,0.0005,8,64,0.001'] * 4))
  with pytest.raises(definitions.ConfigError, match='sentiment has none there'):
    definitions.config_from_flags(_flag_values('--emotion=sentiment', f'--para_path={csv_path}'))
  _, started = commands['output_dim']
  result = started.finish()
  run_helpers.assert_one_line(result, r'has 16 traits values per utterance but the model has 3 '
                              r'outputs: leave --output_dim out')


def test_a_bare_2018_regression_state_dict_names_its_target(tmp_path):
  from lmf_torch_npu import model as torch_model  # pylint: disable=import-outside-toplevel
  config = definitions.config_from_flags(_flag_values('--emotion=sentiment', *SMALL))
  torch.manual_seed(0)
  module = torch_model.from_config(config, (74, 47, 300))
  path = tmp_path / 'mosi_model.pt'
  torch.save(module.state_dict(), path)
  arrays, loaded, _ = state_dict.load_checkpoint(str(path), '')
  assert (loaded.emotion, loaded.output_dim) == ('sentiment', 1)
  assert state_dict.input_dims(arrays) == (74, 47, 300)
  with pytest.raises(CheckpointError, match='1 output.*which a sad model cannot have'):
    state_dict.load_checkpoint(str(path), 'sad')


def test_a_non_finite_step_is_zeroed_before_averaging(stand_ins):
  """MulT's MOSI audio holds -inf steps: they count as 0 (as MulT's and MMSA's loaders make
  them), and the other steps of that utterance still make its vector."""
  from iemocap import pickle_io  # pylint: disable=import-outside-toplevel
  with open(stand_ins['mult-mosi'], 'rb') as f:
    raw = pickle_io.restricted_load(f)
  audio = raw['train']['audio']
  bad = ~np.isfinite(audio)
  assert bad.any()  # the stand-in plants them
  split = formats.load_regression(formats.read(stand_ins['mult-mosi'])).splits['train']
  np.testing.assert_allclose(split.audio, np.where(bad, 0, audio).mean(axis=1), rtol=1e-5,
                             atol=1e-6)
  assert split.audio_replaced.inf == int(bad.sum()) and split.audio_replaced.nan == 0
  touched = bad.any(axis=1)  # (N, D) entries with a -inf step keep their finite steps' sum
  assert np.all(split.audio[touched] != 0)


@pytest.mark.slow
def test_parity_holds_on_the_traits_preset():
  """Every parity check on a regression target (16 outputs, L1 over them), float32, on the
  default POM stand-in with parity's own batches (the CI job runs both targets in float32 and
  float64). L1's gradient is a sign: a model fitted to a few dozen utterances has residuals
  near 0 whose float32 sign flips make the 50 Adam steps differ by 2e-4, so not on those."""
  from parity import checks  # pylint: disable=import-outside-toplevel
  dataset = formats.load(synthetic_formats.default_path('traits'), 'traits')
  results = checks.run_emotion('traits', dataset, epochs=1, seeds=2, dtypes=('float32',))
  failed = [str(r) for r in results if not r.passed]
  assert not failed, failed
  assert {r.check for r in results} >= {
      'conversion', 'eval_logits', 'gradients', 'adam_50_steps_regression', 'same_weights_figures',
      'short_training_mae', 'short_training_losses', 'checkpoint_round_trip_mae', 'onnx_logits',
      'dropout_training_mae'}


def test_what_a_regression_target_cannot_take_is_one_line(small_data_file, stand_ins, tmp_path,
                                                           capsys):
  with pytest.raises(definitions.ConfigError, match='holds IEMOCAP emotions, not traits'):
    definitions.config_from_flags(_flag_values('--emotion=traits',
                                               f'--data_path={small_data_file}'))
  from iemocap import pickle_io  # pylint: disable=import-outside-toplevel
  with open(stand_ins['lmf2018-mosi'], 'rb') as f:
    raw = pickle_io.restricted_load(f)
  raw['valid']['glove'][3, 2, 1] = np.nan
  damaged = tmp_path / 'mosi.pkl'
  damaged.write_bytes(__import__('pickle').dumps(raw, protocol=4))
  with pytest.raises(formats.DataError, match='text of split valid holds 1 NaN or inf'):
    formats.load(str(damaged), 'sentiment')
  from parity import bench, bench_predict  # pylint: disable=import-outside-toplevel
  for tool in (bench, bench_predict):  # both measure the IEMOCAP presets only
    assert tool.main(['--emotion=sentiment']) == 2
    assert 'measures the four IEMOCAP presets' in capsys.readouterr().err


def test_members_recorded_before_a_figure_existed_still_summarise(stand_ins, tmp_path):
  """A population resumed on newer code reads finished trials' records that lack newer figures
  (CH-SIMS's acc3 and acc5 came later): they are unknown, not a crash."""
  from engine import population  # pylint: disable=import-outside-toplevel
  config = definitions.config_from_flags(_flag_values(
      f'--data_path={stand_ins["mmsa-sims"]}', f'--workdir={tmp_path}', *SMALL))
  dataset = formats.load(stand_ins['mmsa-sims'], config.emotion)
  members = population.member_configs(config, 2, ())
  figures = dict(metrics.regression_metrics(dataset.test.label, dataset.test.label * 0.5,
                                            dataset.corpus))
  assert figures['acc3'] is not None  # what the current code records for CH-SIMS
  old = {k: v for k, v in figures.items() if k not in metrics.SIMS_FIGURES}
  member_records = [{'member': i, 'seed': c.seed, **c.hparams(), 'best_valid_loss': valid,
                     'test_loss': 0.5, 'best_epoch': 2, 'epochs_run': 3, 'stopped_by': 'epochs',
                     **(old if i == 0 else figures)}
                    for i, (c, valid) in enumerate(zip(members, (0.3, 0.4)))]
  summary = population.summarise(config, members, member_records, dataset, True, backend='jax',
                                 device='cpu', throughput=1.0, wall_s=1.0)
  assert summary['chosen_member'] == 0 and summary['acc3'] is None
  assert summary['acc3_mean'] == figures['acc3'] and summary['mae'] == figures['mae']


# --- The command lines started with the module ---------------------------------------------------

def test_a_mult_mosi_file_trains_sentiment_with_the_jax_command(stand_ins, commands,
                                                                 tmp_path):
  workdir, started = commands['mosi']
  result = started.finish()
  assert result.returncode == 0, result.stderr[-3000:]
  record = _result(workdir)
  assert (record['emotion'], record['task']) == ('sentiment', 'regression')
  for key in metrics.FIGURES['regression'] + ('baseline_mae',):
    if key in metrics.SIMS_FIGURES:
      assert record[key] is None, key  # CH-SIMS's classes only
    else:
      assert isinstance(record[key], float), key  # acc7 too: MOSI is scored on [-3, 3]
  assert record['test_loss'] == pytest.approx(record['mae'], rel=1e-5)  # L1 is the MAE
  assert 'MAE' in result.stdout and '7-class accuracy' in result.stdout
  with open(workdir / records.RESULTS_CSV, newline='') as f:
    header = next(csv.reader(f))
  assert header[11:17] == [name for name, _ in records.CSV_2018_COLUMNS['regression'][11:]]
  config = files.read_json(workdir / records.CONFIG_JSON)
  assert config['config']['output_dim'] == 1
  # The other backend's evaluate, from the command line, on the checkpoint and data it names.
  evaluated = run_helpers.run_cli('lmf_torch_npu.evaluate', f'--checkpoint={workdir}',
                                  '--device=cpu', '--json')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  report = json.loads(evaluated.stdout)
  assert report['task'] == 'regression' and report['mae'] == pytest.approx(record['mae'], abs=1e-5)
  # Predictions: the value and its sign, for a file's split as for the API.
  predictor = jax_predict.Predictor(str(workdir))
  predictions = predictor.predict_file(stand_ins['mult-mosi'], split='test')
  out = tmp_path / 'pred.csv'
  prediction.write(str(out), predictions)
  with open(out, newline='') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['index', 'value', 'prediction'] and len(rows) == SIZES[2]
  values = np.array([float(r['value']) for r in rows])
  assert metrics.regression_metrics(
      formats.load(stand_ins['mult-mosi'], 'sentiment').test.label, values[:, None],
      'CMU-MOSI')['mae'] == pytest.approx(record['mae'], abs=1e-5)
  assert [r['prediction'] for r in rows] == ['positive' if v >= 0 else 'negative'
                                             for v in values]


def test_a_2018_pom_file_trains_every_trait_with_the_torch_command(stand_ins, commands):
  workdir, started = commands['pom']
  result = started.finish()
  assert result.returncode == 0, result.stderr[-3000:]
  record = _result(workdir)
  assert (record['emotion'], record['task']) == ('traits', 'regression')
  assert len(record['mae_per_target']) == len(record['corr_per_target']) == 16
  assert record['mae'] == pytest.approx(np.mean(record['mae_per_target']))
  assert record['test_loss'] == pytest.approx(record['mae'], rel=1e-5)  # per utterance and trait
  assert record['acc2_has0'] is None and record['acc7'] is None
  arrays, _ = state_dict.load(os.path.join(workdir, records.CHECKPOINT))
  assert arrays['fusion_bias'].shape == (1, 16)
  rows = prediction.rows(jax_predict.Predictor(str(workdir)).predict_file(
      stand_ins['lmf2018-pom'], split='valid'))
  assert list(rows[0])[1:] == [f'value_{t}' for t in prediction.POM_TRAITS]  # no prediction
  from lmf_torch_npu import export  # pylint: disable=import-outside-toplevel
  _, config, _ = state_dict.load_checkpoint(os.path.join(workdir, records.CHECKPOINT))
  utterances = export.check_utterances(state_dict.input_dims(arrays))
  diff, agree = export.check(export.export_onnx(arrays, config), arrays, config, utterances[:3])
  assert diff < 1e-5 and agree is None  # 16 values, no class to agree on


def test_populations_of_sentiment_models_in_both_backends(commands):
  (jax_dir, jax_started), (torch_dir, torch_started) = commands['populations']
  jax_run, torch_run = jax_started.finish(), torch_started.finish()
  assert jax_run.returncode == 0, jax_run.stderr[-3000:]
  assert torch_run.returncode == 0, torch_run.stderr[-3000:]
  for workdir, seven in ((jax_dir, False), (torch_dir, True)):
    record = _result(workdir)
    assert record['task'] == 'regression' and record['num_models'] == 2
    maes = [m['mae'] for m in record['members']]
    assert record['mae_mean'] == pytest.approx(np.mean(maes))
    assert record['mae_std'] == pytest.approx(np.std(maes, ddof=1))
    chosen = min(record['members'], key=lambda m: m['best_valid_loss'])
    assert record['mae'] == chosen['mae'] and record['seed'] == chosen['seed']
    assert (record['acc7'] is not None) == seven  # CH-SIMS is not scored on [-3, 3]
    assert (record['acc3_mean'] is None) == seven and (record['acc5'] is None) == seven
    assert (record['f1_neg0_mean'] is None) == seven
    assert 'MAE  mean' in (jax_run if workdir == jax_dir else torch_run).stdout

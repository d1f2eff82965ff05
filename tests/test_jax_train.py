"""lmf_jax's trainer end to end: learning, determinism, resume, outputs, errors, evaluate."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from engine import records
from engine import workdirs
from engine.errors import RunError
from flags import presets
from flags.config import Config
from iemocap import files
from lmf_jax import evaluate
from lmf_jax import train
import run_helpers
from run_helpers import DETERMINISTIC_KEYS, check_run_outputs, read_bytes, small_config


@pytest.fixture(scope='module')
def finished_run(small_data_dir, tmp_path_factory):
  config = small_config(small_data_dir, tmp_path_factory.mktemp('jax_run') / 'run')
  return config, train.train_and_evaluate(config)


def test_outputs_are_complete_and_consistent(finished_run):
  config, record = finished_run
  workdir = config.workdir
  saved, history, config_json, metadata = check_run_outputs(workdir, config, record, 'jax')
  assert saved['emotion'] == 'sad' and saved['synthetic']
  best = [row for row in history if row['epoch'] == record['best_epoch']][0]
  assert best['valid_loss'] == record['best_valid_loss']
  with open(os.path.join(workdir, records.RESULTS_CSV)) as f:
    header, row = [line.rstrip('\n').split(',') for line in f]
  assert header[:15] == [name for name, _ in records.CSV_2018_COLUMNS['classification']]
  assert float(row[header.index('Test F1-score')]) == record['f1']
  assert read_bytes(os.path.join(workdir, records.LOSS_CURVE))[:8] == b'\x89PNG\r\n\x1a\n'
  assert config_json['config'] == config.to_dict()
  assert metadata['config'] == {**config.to_dict(), 'workdir': ''}


def test_evaluate_reproduces_the_trainers_test_f1(finished_run):
  config, record = finished_run
  report = evaluate.evaluate(os.path.join(config.workdir, records.CHECKPOINT),
                             data_path=config.data_path)
  assert report['f1'] == record['f1'] and report['accuracy'] == record['accuracy']
  assert report['loss'] == pytest.approx(record['test_loss'], rel=1e-6)
  assert report['n'] == record['n_test'] and report['written_by'] == 'jax'
  valid = evaluate.evaluate(os.path.join(config.workdir, records.CHECKPOINT),
                            data_path=config.data_path, split='valid')
  assert valid['loss'] == pytest.approx(record['best_valid_loss'], rel=1e-6)


def test_same_seed_same_results_and_checkpoint(finished_run, tmp_path):
  config, record = finished_run
  again = train.train_and_evaluate(dataclasses.replace(config, workdir=str(tmp_path / 'again')))
  for key in DETERMINISTIC_KEYS:
    assert again[key] == record[key], key
  assert read_bytes(tmp_path / 'again' / records.CHECKPOINT) == read_bytes(
      os.path.join(config.workdir, records.CHECKPOINT))
  other = train.train_and_evaluate(dataclasses.replace(config, workdir=str(tmp_path / 'other'),
                                                       seed=2))
  assert other['best_valid_loss'] != record['best_valid_loss']


class Interrupt(Exception):
  pass


def test_resume_after_interruption_equals_an_uninterrupted_run(small_data_dir, tmp_path):
  config = small_config(small_data_dir, tmp_path / 'whole', epochs=6, patience=10)
  whole = train.train_and_evaluate(config)

  def stop_after_3(epoch):
    if epoch == 3:
      raise Interrupt()

  cut = dataclasses.replace(config, workdir=str(tmp_path / 'cut'))
  with pytest.raises(Interrupt):
    train.train_and_evaluate(cut, on_epoch_end=stop_after_3)
  assert not (tmp_path / 'cut' / records.RESULTS_JSON).exists()
  with pytest.raises(RunError, match='holds an interrupted run: pass --resume'):
    train.train_and_evaluate(cut)
  resumed = train.train_and_evaluate(cut, resume=True)
  for key in DETERMINISTIC_KEYS:
    assert resumed[key] == whole[key], key
  assert read_bytes(tmp_path / 'cut' / records.CHECKPOINT) == read_bytes(
      tmp_path / 'whole' / records.CHECKPOINT)
  whole_history = records.read_metrics(str(tmp_path / 'whole'))
  cut_history = records.read_metrics(str(tmp_path / 'cut'))
  for a, b in zip(whole_history, cut_history):
    assert (a['train_loss'], a['valid_loss']) == (b['train_loss'], b['valid_loss'])
  assert len(whole_history) == len(cut_history)


def test_workdir_is_never_overwritten(finished_run):
  config, record = finished_run
  assert train.train_and_evaluate(config) == record  # finished: reported, not retrained
  with pytest.raises(RunError, match=r'another configuration \(differs in lr\)'):
    train.train_and_evaluate(dataclasses.replace(config, lr=0.01))
  with pytest.raises(RunError, match='--resume: workdir .* holds no run'):
    train.train_and_evaluate(dataclasses.replace(config, workdir=config.workdir + '-new'),
                             resume=True)


def test_a_run_cut_before_its_first_saved_epoch_starts_again(small_data_dir, tmp_path):
  config = small_config(small_data_dir, tmp_path / 'cut')
  config, status = workdirs.prepare_workdir(config, 'jax', {}, resume=False)
  assert status == 'new'
  (tmp_path / 'cut' / records.CHECKPOINT).write_bytes(b'best of epoch 1, progress never saved')
  assert workdirs.prepare_workdir(config, 'jax', {}, resume=False)[1] == 'new'
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / records.CHECKPOINT).write_bytes(b'somebody else\'s')
  with pytest.raises(RunError, match='already holds checkpoint.safetensors but no config.json'):
    workdirs.prepare_workdir(dataclasses.replace(config, workdir=str(foreign)), 'jax', {},
                            resume=False)


@pytest.mark.slow
def test_training_beats_the_majority_baseline(tmp_path):
  from iemocap import synthetic  # pylint: disable=import-outside-toplevel
  data = synthetic.write(tmp_path / 'data', seed=0, sizes=(900, 300, 300))
  config = Config(emotion='sad', data_path=data, workdir=str(tmp_path / 'run'), epochs=30,
                  patience=5, seed=0, **{**presets.PRESETS['sad'], 'text_hidden': 32,
                                         'batch_size': 64})
  record = train.train_and_evaluate(config)
  assert record['f1'] > record['majority_f1'] + 0.08
  assert record['accuracy'] > record['majority_accuracy']
  assert record['f1'] < 0.99


def run_cli(module, *args, env=None):
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                        check=False, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_command_line_trains_and_evaluates(small_data_dir, tmp_path):
  workdir = tmp_path / 'cli'
  args = [f'--data_path={small_data_dir}', f'--workdir={workdir}', "--emotion=b'happy'",
          '--epochs=2', '--text_hidden=16', '--batch_size=32']
  result = run_cli('lmf_jax.train', *args)
  assert result.returncode == 0, result.stderr
  assert 'weighted F1' in result.stdout and 'majority' in result.stdout
  first_log = [line for line in result.stderr.splitlines() if ' train.py:' in line][0]
  assert 'synthetic' in first_log and "not the paper's F1" in first_log
  assert re.search(r'non-finite features set to 0: happy/train: replaced \d+ NaN and \d+ inf in '
                   'covarep', result.stderr)
  record = files.read_json(workdir / records.RESULTS_JSON)
  assert record['emotion'] == 'happy'
  evaluated = run_cli('lmf_jax.evaluate', f'--checkpoint={workdir / records.CHECKPOINT}',
                      f'--data_path={small_data_dir}', '--json')
  assert evaluated.returncode == 0, evaluated.stderr
  assert json.loads(evaluated.stdout)['f1'] == record['f1']


@pytest.mark.parametrize('args, message', [
    (['--emotion=joy'], "error: unknown emotion 'joy'"),
    (['--data_path=/nonexistent/iemocap.pkl'], 'error: data file /nonexistent/iemocap.pkl does not exist'),
    (['--text_dropout=1.5'], r'error: text_dropout=1.5 must be in \[0, 1\)'),
    (['--perf_steps=-5'], r'error: --perf_steps=-5 must be >= 0'),
    (['--lr=1e30', '--factor_lr=1e30', '--epochs=3'],
     r'error: no model to test: training diverged at epoch 1 \(train loss became nan'),
])
def test_command_line_errors_are_one_line(small_data_dir, tmp_path, args, message):
  base = [f'--data_path={small_data_dir}', f'--workdir={tmp_path / "bad"}', '--text_hidden=16',
          '--batch_size=32']
  result = run_cli('lmf_jax.train', *base, *args)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert __import__('re').match(message, last), result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'bad' / records.RESULTS_JSON).exists()


def test_evaluate_takes_a_workdir_and_knows_no_training_flag(finished_run):
  config, record = finished_run
  refused_flags = ('--num_seeds=3', '--lr=0.1', f'--workdir={config.workdir}')
  python = [sys.executable, '-m']
  # Five independent commands, run at once.
  result, *refusals, single = run_helpers.run_concurrently(
      [*python, 'lmf_jax.evaluate', f'--checkpoint={config.workdir}', '--json'],
      *[[*python, 'lmf_jax.evaluate', f'--checkpoint={config.workdir}', flag]
        for flag in refused_flags],
      [*python, 'lmf_jax.train', '--save_members', f'--data_path={config.data_path}'])
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert report['f1'] == record['f1'] and report['data'] == record['data']  # the run's own data
  for flag, refused in zip(refused_flags, refusals):
    assert refused.returncode == 2, flag
    assert refused.stderr.startswith('error: Unknown command line flag'), refused.stderr
  assert single.returncode == 2 and '--save_members needs' in single.stderr


def test_perf_mode_reports_step_time(small_data_dir):
  result = run_cli('lmf_jax.train', f'--data_path={small_data_dir}', '--perf_steps=5',
                   '--text_hidden=16', '--batch_size=32', '--emotion=sad')
  assert result.returncode == 0, result.stderr
  assert 'step time' in result.stdout and 'samples/s (FPS)' in result.stdout
  fps = float(result.stdout.split('ms, ')[1].split(' samples/s')[0])
  assert fps > 0


@pytest.fixture(scope='module', autouse=True)
def readme_example(request, tmp_path_factory):
  """README's 'From Python' block, with fewer epochs and seeds, started as a user would run it when
  this module starts if its test is to run: it runs on the default synthetic set for a minute,
  mostly on one core, beside the tests above. (the block, its directory, the started process)"""
  readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md'), encoding='utf-8').read()
  block = readme.split('## From Python', 1)[1].split('```python\n', 1)[1].split('```', 1)[0]
  code = block.replace('epochs=50', 'epochs=2').replace('num_seeds=8', 'num_seeds=2')
  directory = tmp_path_factory.mktemp('readme')
  with run_helpers.started_for(request, 'test_the_readme_python_example_runs',
                               [sys.executable, '-c', code], cwd=directory) as process:
    yield block, directory, process


def test_the_readme_python_example_runs(readme_example):
  block, directory, process = readme_example
  assert 'train_population' in block and 'train_and_evaluate' in block
  result = process.finish()
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'test F1' in result.stdout and 'over 2 seeds' in result.stdout
  assert (directory / 'runs' / 'sad-seeds' / records.RESULTS_JSON).exists()

"""lmf_torch_npu's trainer end to end on the CPU: outputs, determinism, resume, AMP, evaluate,
command lines and the ModelZoo scripts."""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from engine import records
from engine.errors import RunError
from iemocap import files
from lmf_torch_npu import evaluate
from lmf_torch_npu import train
from lmf_torch_npu.device import TorchOptions
from run_helpers import DETERMINISTIC_KEYS, check_run_outputs, read_bytes, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, 'lmf_torch_npu', 'scripts')
CPU = TorchOptions(device='cpu')
# The tests check behaviour, not speed: one intra-op thread keeps these tiny models fast on a
# shared 2-core machine, where a 2-thread OpenMP pool stalls whenever another process holds a core.
ONE_THREAD = {'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module', autouse=True)
def one_thread():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def finished_run(small_data_dir, tmp_path_factory):
  config = small_config(small_data_dir, tmp_path_factory.mktemp('torch_run') / 'run')
  return config, train.train_and_evaluate(config, CPU)


def test_outputs_are_complete_and_name_the_backend_and_device(finished_run):
  config, record = finished_run
  saved, _, config_json, _ = check_run_outputs(config.workdir, config, record, 'torch')
  assert saved['device'] == 'cpu (1 thread), float32'  # the thread count shapes float32 bits
  assert config_json['backend_options'] == {'device': 'cpu', 'amp': 'off', 'amp_backend': 'none',
                                            'amp_dtype': 'float32', 'loss_scale': 'none'}


def test_evaluate_reproduces_the_trainers_test_f1(finished_run):
  config, record = finished_run
  path = os.path.join(config.workdir, records.CHECKPOINT)
  report = evaluate.evaluate(path, data_path=config.data_path)
  assert report['f1'] == record['f1'] and report['accuracy'] == record['accuracy']
  assert report['loss'] == pytest.approx(record['test_loss'], rel=1e-6)
  assert report['n'] == record['n_test'] and report['written_by'] == 'torch'
  valid = evaluate.evaluate(path, data_path=config.data_path, split='valid')
  assert valid['loss'] == pytest.approx(record['best_valid_loss'], rel=1e-6)


def test_same_seed_same_results_and_checkpoint(finished_run, tmp_path):
  config, record = finished_run
  again = train.train_and_evaluate(dataclasses.replace(config, workdir=str(tmp_path / 'again')),
                                   CPU)
  for key in DETERMINISTIC_KEYS:
    assert again[key] == record[key], key
  assert read_bytes(tmp_path / 'again' / records.CHECKPOINT) == read_bytes(
      os.path.join(config.workdir, records.CHECKPOINT))
  other = train.train_and_evaluate(dataclasses.replace(config, workdir=str(tmp_path / 'other'),
                                                       seed=2), CPU)
  assert other['best_valid_loss'] != record['best_valid_loss']


class Interrupt(Exception):
  pass


@pytest.mark.parametrize('torch_options', [
    CPU, pytest.param(TorchOptions(device='cpu', amp='O1', loss_scale='dynamic'),
                      marks=pytest.mark.amp)], ids=['fp32', 'bf16-scaled'])
def test_resume_after_interruption_equals_an_uninterrupted_run(small_data_dir, tmp_path,
                                                               torch_options):
  config = small_config(small_data_dir, tmp_path / 'whole', epochs=5, patience=10)
  whole = train.train_and_evaluate(config, torch_options)

  def stop_after_2(epoch):
    if epoch == 2:
      raise Interrupt()

  cut = dataclasses.replace(config, workdir=str(tmp_path / 'cut'))
  with pytest.raises(Interrupt):
    train.train_and_evaluate(cut, torch_options, on_epoch_end=stop_after_2)
  with pytest.raises(RunError, match='holds an interrupted run: pass --resume'):
    train.train_and_evaluate(cut, torch_options)
  resumed = train.train_and_evaluate(cut, torch_options, resume=True)
  for key in DETERMINISTIC_KEYS:
    assert resumed[key] == whole[key], key
  assert read_bytes(tmp_path / 'cut' / records.CHECKPOINT) == read_bytes(
      tmp_path / 'whole' / records.CHECKPOINT)
  # The train state's metadata holds the loss scaler's counters: equal bytes mean they resumed too.
  assert read_bytes(tmp_path / 'cut' / records.TRAIN_STATE) == read_bytes(
      tmp_path / 'whole' / records.TRAIN_STATE)
  strip = lambda rows: [(r['train_loss'], r['valid_loss']) for r in rows]
  assert strip(records.read_metrics(str(tmp_path / 'cut'))) == strip(
      records.read_metrics(str(tmp_path / 'whole')))


def test_workdir_is_never_overwritten(finished_run):
  config, record = finished_run
  assert train.train_and_evaluate(config, CPU) == record  # finished: reported, not retrained
  with pytest.raises(RunError, match=r'another configuration \(differs in lr\)'):
    train.train_and_evaluate(dataclasses.replace(config, lr=0.01), CPU)
  with pytest.raises(RunError, match=r'another configuration \(differs in backend options\)'):
    train.train_and_evaluate(config, TorchOptions(device='cpu', amp='O1'))


@pytest.mark.amp
def test_bf16_amp_on_cpu_trains_and_stays_finite(small_data_dir, tmp_path):
  config = small_config(small_data_dir, tmp_path / 'amp', epochs=6, patience=10)
  record = train.train_and_evaluate(config, TorchOptions(device='cpu', amp='O1'))
  # ', LSTM in float32)' follows where this CPU's oneDNN has no bf16 LSTM.
  assert record['device'].startswith('cpu (1 thread), amp O1 (native, bfloat16, loss scale none')
  history = records.read_metrics(config.workdir)
  assert all(math.isfinite(r['train_loss']) and math.isfinite(r['valid_loss']) for r in history)
  assert history[-1]['train_loss'] < history[0]['train_loss']
  assert math.isfinite(record['test_loss']) and 0 < record['f1'] <= 1
  report = evaluate.evaluate(os.path.join(config.workdir, records.CHECKPOINT),
                             data_path=config.data_path)
  assert report['f1'] == record['f1']  # evaluations run in float32 in both


def run_cli(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                        check=False, cwd=ROOT, env={**os.environ, **ONE_THREAD})


def test_command_line_trains_and_evaluates(small_data_dir, tmp_path):
  workdir = tmp_path / 'cli'
  args = [f'--data_path={small_data_dir}', f'--workdir={workdir}', "--emotion=b'happy'",
          '--epochs=2', '--text_hidden=16', '--batch_size=32']
  result = run_cli('lmf_torch_npu.train', *args)
  assert result.returncode == 0, result.stderr
  assert 'weighted F1' in result.stdout and 'majority' in result.stdout
  assert re.search(r'torch \S+ on cpu \(no NPU \(.*\); precision float32', result.stderr)
  record = files.read_json(workdir / records.RESULTS_JSON)
  assert record['emotion'] == 'happy' and record['backend'] == 'torch'
  evaluated = run_cli('lmf_torch_npu.evaluate', f'--checkpoint={workdir / records.CHECKPOINT}',
                      f'--data_path={small_data_dir}', '--json')
  assert evaluated.returncode == 0, evaluated.stderr
  assert json.loads(evaluated.stdout)['f1'] == record['f1']


@pytest.mark.parametrize('module, args, message', [
    ('lmf_torch_npu.train', ['--device=tpu'], r"error: --device='tpu': expected auto, npu"),
    ('lmf_torch_npu.train', ['--device=npu'], 'error: --device=npu: torch_npu is not installed'),
    ('lmf_torch_npu.train', ['--loss_scale=128'], 'error: --loss_scale=128 needs mixed precision'),
    ('lmf_torch_npu.train', ['--emotion=joy'], "error: unknown emotion 'joy'"),
    ('lmf_torch_npu.train', ['--lr=1e30', '--factor_lr=1e30', '--epochs=3'],
     r'error: no model to test: training diverged at epoch 1 \(train loss became nan'),
    ('lmf_torch_npu.evaluate', ['--checkpoint=/nonexistent.safetensors'],
     'error: checkpoint /nonexistent.safetensors does not exist'),
    ('lmf_torch_npu.evaluate', ['--checkpoint=x', '--amp=O1'], "error: Unknown command line flag 'amp'"),
])
def test_command_line_errors_are_one_line(small_data_dir, tmp_path, module, args, message):
  if 'torch_npu' in ' '.join(args) and 'torch_npu' in sys.modules:
    pytest.skip('torch_npu is installed here')
  base = [f'--data_path={small_data_dir}']
  if module.endswith('train'):
    base += [f'--workdir={tmp_path / "bad"}', '--text_hidden=16', '--batch_size=32']
  result = run_cli(module, *base, *args)
  assert result.returncode == 2, result.stderr
  assert re.match(message, result.stderr.strip().splitlines()[-1]), result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'bad' / records.RESULTS_JSON).exists()


def test_perf_mode_reports_step_time(small_data_dir):
  result = run_cli('lmf_torch_npu.train', f'--data_path={small_data_dir}', '--perf_steps=5',
                   '--text_hidden=16', '--batch_size=32', '--emotion=sad')
  assert result.returncode == 0, result.stderr
  assert re.match(r'torch sad on cpu \(1 thread\), float32: 5 steps of batch 32, step time [0-9.]+ ms, '
                  r'[0-9]+ samples/s \(FPS\)$', result.stdout.strip()), result.stdout


MODELZOO_LINES = (r'Final Performance images/sec : [0-9.]+', r'Final Train Accuracy : [0-9.]+',
                  r'Final Test F1 : [0-9.]+', r'E2E Training Duration sec : [0-9]+')


@pytest.mark.parametrize('script, extra, cann', [
    ('train_full_1p.sh', [], True),
    ('train_performance_1p.sh', ['--perf_steps=3'], False),
])
def test_modelzoo_scripts_run_on_cpu_and_print_the_parsed_lines(small_data_dir, tmp_path, script,
                                                                 extra, cann):
  out = tmp_path / 'out'
  # A stand-in for CANN's set_env.sh that only leaves a mark: env_npu.sh must source it.
  set_env = tmp_path / 'set_env.sh'
  set_env.write_text(f'echo sourced > {tmp_path / "cann_sourced"}\n')
  result = subprocess.run(
      ['bash', os.path.join(SCRIPTS, script), f'--data_url={small_data_dir}',
       f'--train_url={out}', "--emotion=b'sad'", '--epochs=2', '--text_hidden=16',
       '--batch_size=32', *extra],
      capture_output=True, text=True, check=False, cwd=tmp_path,
      env={**os.environ, **ONE_THREAD, 'PYTHON': sys.executable, 'ASCEND_DEVICE_ID': '3',
           'CANN_SET_ENV': str(set_env if cann else tmp_path / 'no_cann.sh')})
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / 'cann_sourced').exists() == cann
  lines = result.stdout.strip().splitlines()
  for pattern in MODELZOO_LINES:
    assert any(re.fullmatch(pattern, line) for line in lines), (pattern, result.stdout)
  assert 'Device : cpu (1 thread), float32' in lines
  log_dir = out / 'test' / 'output' / '3'
  assert (log_dir / 'train_3.log').exists()
  assert (log_dir / 'modelzoo_summary.log').read_text() == result.stdout
  run = out / ('sad-perf' if 'performance' in script else 'sad')
  record = files.read_json(run / records.RESULTS_JSON)
  assert f'Final Test F1 : {100 * record["f1"]:.2f}' in lines
  assert record['epochs_run'] == 2


def test_modelzoo_script_refuses_a_bad_emotion_in_one_line(tmp_path):
  result = subprocess.run(
      ['bash', os.path.join(SCRIPTS, 'train_full_1p.sh'), '--emotion=joy',
       f'--train_url={tmp_path}'], capture_output=True, text=True, check=False,
      env={**os.environ, **ONE_THREAD, 'PYTHON': sys.executable})
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: unknown emotion 'joy': choose one of happy, sad, angry, "
                                   'neutral (IEMOCAP), or sentiment or traits (regression sets)')


def test_the_8p_performance_script_trains_its_trials_briefly(small_data_dir, tmp_path):
  """RANK_SIZE trials (2 here, in this process to keep it short) for PERF_EPOCHS epochs."""
  out = tmp_path / 'out'
  result = subprocess.run(
      ['bash', os.path.join(SCRIPTS, 'train_performance_8p.sh'), f'--data_url={small_data_dir}',
       f'--train_url={out}', '--emotion=sad', '--text_hidden=16', '--batch_size=32',
       '--ray_address=none', '--cpus_per_trial=1'],
      capture_output=True, text=True, check=False, cwd=tmp_path,
      env={**os.environ, 'PYTHON': sys.executable, 'RANK_SIZE': '2', 'PERF_EPOCHS': '1',
           'CANN_SET_ENV': str(tmp_path / 'no_cann.sh')})
  assert result.returncode == 0, result.stdout + result.stderr
  record = files.read_json(out / 'sad-2p-perf' / records.RESULTS_JSON)
  assert record['num_models'] == 2 and all(m['epochs_run'] == 1 for m in record['members'])
  fps = sum(m['train_samples_per_s'] for m in record['members'])
  assert f'Final Performance images/sec : {fps:.2f}' in result.stdout.splitlines()

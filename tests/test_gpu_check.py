"""parity.gpu_check: its plan, how it reads the trainers and parity, how a failing step is
recorded, and a --quick run end to end on this machine (CUDA steps recorded as not available)."""

import json
import subprocess
import sys

import pytest
import torch

from engine import records
from parity import gpu_check
import run_helpers

CUDA = torch.cuda.is_available()


@pytest.fixture(scope='module', autouse=True)
def quick_run(request, tmp_path_factory):
  """`python -m parity.gpu_check --quick`, started when this module starts if its test is to run:
  its steps run one after another, mostly on one core, beside the tests above. (its --out path,
  the process)"""
  out = tmp_path_factory.mktemp('gpu_check') / 'gpu_check.json'
  with run_helpers.started_for(request, 'test_quick_run_end_to_end_writes_one_json_of_figures',
                               [sys.executable, '-m', 'parity.gpu_check', '--quick',
                                f'--out={out}']) as process:
    yield out, process


def test_the_perf_line_of_either_trainer_is_read():
  single = {'backend': 'torch', 'emotion': 'sad', 'device': 'cuda:0 (NVIDIA H200), amp O1 '
            '(native, float16, loss scale dynamic)', **records.perf_report(256, 0.0042, 200)}
  figures = gpu_check.parse_perf('a log line\n' + records.format_perf(single) + '\n')
  assert figures == {'device': single['device'], 'steps': 200, 'step_ms': 4.2,
                     'samples_per_s': pytest.approx(60952, abs=1)}
  many = {'backend': 'jax', 'emotion': 'angry', 'device': 'gpu:NVIDIA H200', 'num_models': 16,
          **records.perf_report(16 * 64, 0.0105, 50)}
  figures = gpu_check.parse_perf(records.format_perf(many))
  assert figures['device'] == 'gpu:NVIDIA H200' and figures['steps'] == 50
  assert figures['samples_per_s'] == pytest.approx(16 * 64 / 0.0105, abs=1)
  with pytest.raises(ValueError):
    gpu_check.parse_perf('jax sad: nothing timed\n')


def test_parity_results_are_summed_up_per_check_and_dtype(tmp_path):
  path = tmp_path / 'parity.json'
  rows = [('sad', 'float32', 2e-6, True), ('happy', 'float32', 3e-6, True),
          ('sad', 'float64', None, False), ('happy', 'float64', 1e-15, True)]
  path.write_text(json.dumps([{'check': 'gradients', 'emotion': e, 'dtype': d, 'max_diff': m,
                               'tol': 1e-5, 'passed': p, 'where': 'audio_factor'}
                              for e, d, m, p in rows]))
  figures = gpu_check.parse_parity(str(path))
  assert figures['passed'] == 3 and figures['total'] == 4 and len(figures['failed']) == 1
  assert figures['worst']['gradients/float32'] == {'max_diff': 3e-6, 'tol': 1e-5,
                                                   'where': 'happy: audio_factor'}
  assert figures['worst']['gradients/float64']['max_diff'] is None  # a failure is never hidden


def test_the_full_plan_puts_torch_on_cuda_and_fewer_steps_on_many_models():
  steps = gpu_check.plan_steps(gpu_check.FULL, (), '/scratch')
  names = [s.name for s in steps]
  assert names[:5] == ['perf/lmf_jax/sad', 'perf/lmf_torch_npu/sad/fp32',
                       'perf/lmf_torch_npu/sad/O1', 'main/lmf_jax/sad', 'main/lmf_torch_npu/sad']
  assert len(names) == len(set(names)) == 4 * 3 + 2 + 1 + 2 * 3
  for step in steps:
    assert step.cuda == ('lmf_torch_npu' in step.name or step.kind == 'parity')
    if 'lmf_torch_npu' in step.name:
      assert '--device=cuda' in step.argv
  parity = next(s for s in steps if s.kind == 'parity')
  assert '--torch_device=cuda' in parity.argv and dict(parity.env) == gpu_check.SHARED_GPU
  assert [gpu_check.FULL.seed_steps(n) for n in gpu_check.FULL.num_seeds] == [200, 50, 20]
  main_jax = next(s for s in steps if s.name == 'main/lmf_jax/sad')
  assert main_jax.argv == ('-m', 'lmf_jax.train', '--emotion=sad',
                           '--workdir=/scratch/main-lmf_jax')


def test_a_failing_or_slow_step_is_recorded_and_the_next_one_runs(monkeypatch):
  failing = gpu_check.Step('x', 'perf', ('-c', 'import sys; print("why it failed", '
                                         'file=sys.stderr); sys.exit(3)'))
  entry = gpu_check.record_step(failing, 60, cuda=False)
  assert entry['status'] == 'failed' and entry['error'] == 'why it failed'
  silent = gpu_check.Step('x', 'perf', ('-c', 'print("no perf line")'))
  assert gpu_check.record_step(silent, 60, cuda=False)['error'].startswith('unreadable output')
  on_cuda = gpu_check.Step('x', 'perf', ('-c', 'pass'), cuda=True)
  assert gpu_check.record_step(on_cuda, 60, cuda=False)['error'] == 'cuda: not available'
  assert gpu_check.record_step(silent, 5, cuda=False)['error'] == 'time budget spent'
  monkeypatch.setattr(gpu_check, 'MIN_STEP_S', 0)
  slow = gpu_check.Step('x', 'perf', ('-c', 'import time; print("started", flush=True); '
                                      'time.sleep(60)'))
  entry = gpu_check.record_step(slow, 1, cuda=False)
  assert entry['status'] == 'timeout' and entry['seconds'] < 30
  assert entry['error'].startswith('timed out after 1 s')


def test_a_machine_without_cuda_is_refused_with_one_line():
  assert gpu_check.cuda_refusal({'status': 'ok', 'figures': {
      'cuda': ['NVIDIA H200'], 'jax_platform': 'gpu'}}) is None
  assert gpu_check.cuda_refusal({'status': 'ok', 'figures': {
      'cuda': 'not available', 'jax_platform': 'gpu'}}) is None  # jax's figures are worth it
  line = gpu_check.cuda_refusal({'status': 'ok', 'figures': {
      'cuda': 'not available (torch sees no GPU)', 'jax_platform': 'cpu'}})
  assert line.startswith('error: no CUDA GPU to check here (') and '--quick' in line
  assert '\n' not in line
  failed = gpu_check.cuda_refusal({'status': 'timeout', 'error': 'timed out after 90 s'})
  assert failed == 'error: the devices step timeout: timed out after 90 s'


@pytest.mark.skipif(CUDA, reason='this machine has a CUDA GPU')
def test_without_quick_the_command_refuses_a_machine_without_cuda(tmp_path):
  out = tmp_path / 'gpu_check.json'
  done = subprocess.run([sys.executable, '-m', 'parity.gpu_check', f'--out={out}'],
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2 and done.stdout == ''
  assert done.stderr.startswith('error: no CUDA GPU to check here') and done.stderr.count('\n') == 1
  assert not out.exists()


@pytest.mark.slow
def test_quick_run_end_to_end_writes_one_json_of_figures(quick_run):
  out, process = quick_run
  done = process.finish(timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  assert 'status' in done.stdout and f'figures: {out}' in done.stdout
  report = json.loads(out.read_text())
  assert report['mode'] == 'quick' and report['wall_s'] > 0
  assert report['host']['cpus'] >= 1 and 'nvidia_smi' in report
  assert [e['name'] for e in report['steps']] == ['devices'] + [
      s.name for s in gpu_check.plan_steps(gpu_check.QUICK, (), '')]
  steps = {e['name']: e for e in report['steps']}
  for name, entry in steps.items():
    assert entry['status'] in ('ok', 'failed', 'timeout', 'skipped') and entry['command'], name
    if entry['status'] != 'ok':
      assert entry['error'], name
  assert steps['devices']['figures']['jax'].startswith('jax ')
  ran = ['perf/lmf_jax/sad', 'num_seeds/sad/4', 'main/lmf_jax/sad']
  if CUDA:
    ran += ['perf/lmf_torch_npu/sad/fp32', 'perf/lmf_torch_npu/sad/O1', 'main/lmf_torch_npu/sad']
  else:
    for name in ('perf/lmf_torch_npu/sad/fp32', 'perf/lmf_torch_npu/sad/O1',
                 'main/lmf_torch_npu/sad', 'parity/cuda'):
      assert steps[name] == {'name': name, 'status': 'skipped',
                             'command': steps[name]['command'], 'error': 'cuda: not available'}
  for name in ran:
    assert steps[name]['status'] == 'ok', steps[name]
  for name in ran:
    figures = steps[name]['figures']
    if name.startswith('main/'):
      assert 0 <= figures['f1'] <= 1 and figures['epochs_run'] == 2 and figures['wall_s'] > 0
    else:
      assert figures['samples_per_s'] > 0 and figures['step_ms'] > 0 and figures['steps'] == 5
  assert report['num_seeds']['sad']['1'] == steps['perf/lmf_jax/sad']['figures']['samples_per_s']
  assert report['num_seeds']['sad']['4'] > 0

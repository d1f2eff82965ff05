"""parity: the checks pass on the real code, and each fails when the maths it guards is broken."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flags import presets
from flags.config import Config
from iemocap import formats
from lmf_jax import model as jax_model
from lmf_jax import optimizer as jax_optimizer
from lmf_torch_npu import model as torch_model
from parity import bench_predict
from parity import checks
from parity import tolerances
import run_helpers


@pytest.fixture(scope='module')
def dataset(small_data_dir):
  return formats.load(small_data_dir, 'sad')


def pair_for(emotion, dtype='float32', **overrides):
  return checks.Pair(checks.parity_config(emotion, **overrides), dtype)


def by_check(results):
  return {r.check: r for r in results}


@pytest.fixture(scope='module')
def command_run(small_data_dir, tmp_path_factory):
  """`python -m parity` on two presets at once, in its two worker processes: happy (rank 1) and
  neutral (rank 16), both LSTM sizes, in float32 and float64. (the process, its JSON records)"""
  out = tmp_path_factory.mktemp('parity') / 'parity.json'
  result = subprocess.run([sys.executable, '-m', 'parity', f'--data_path={small_data_dir}',
                           '--emotion=happy,neutral', '--seeds=0', '--epochs=2', '--jobs=2',
                           f'--json={out}'], capture_output=True, text=True, check=False)
  return result, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.slow
@pytest.mark.parametrize('emotion', ['happy', 'neutral'])  # rank 1 and rank 16, both LSTM sizes
def test_every_check_passes_in_float32_and_float64(emotion, command_run):
  result, records = command_run
  assert records is not None, result.stdout + result.stderr
  results = [r for r in records if r['emotion'] == emotion]
  failed = [r for r in results if not r['passed']]
  assert not failed, failed
  names = {(r['check'], r['dtype']) for r in results}
  for check in ('conversion', 'eval_logits', 'train_logits', 'running_stats', 'gradients',
                'adam_50_steps', 'adam_50_steps_stats', 'same_weights_metrics', 'short_training_f1',
                'short_training_losses', 'checkpoint_round_trip'):
    assert (check, 'float32') in names and (check, 'float64') in names, check
  assert ('amp_logits', 'bfloat16') in names
  assert sorted(r['where'] for r in results if r['check'] == 'onnx_logits') == [
      'opset 11 graph in ONNX Runtime vs JAX', 'opset 17 graph in ONNX Runtime vs JAX']
  float64 = {r['check']: r['max_diff'] for r in results if r['dtype'] == 'float64'}
  assert float64['eval_logits'] < 1e-12 and float64['gradients'] < 1e-12
  assert float64['adam_50_steps'] < 1e-11


def test_every_tolerance_has_a_reason():
  for (check, dtype), (tol, why) in tolerances.TOLERANCES.items():
    assert tol >= 0 and len(why) > 20, (check, dtype)


def test_a_perturbed_weight_fails_the_output_and_gradient_checks(dataset):
  pair = pair_for('sad')
  factor = np.array(pair.jax['params']['text_factor'])
  factor[0, 3, 1] += 1e-3
  pair.jax['params']['text_factor'] = jnp.asarray(factor)
  eval_result = checks.check_eval_logits(pair, dataset, 'sad')[0]
  assert not eval_result.passed
  gradients = checks.check_gradients(pair, dataset, 'sad')
  assert not gradients.passed
  conversion = checks.check_conversion(pair, 'sad')
  assert not conversion.passed and conversion.where == 'text_factor'


def test_a_perturbed_export_fails_the_onnx_check(dataset):
  pair = pair_for('sad')
  _, jax_logits, _ = checks.check_eval_logits(pair, dataset, 'sad')
  assert all(r.passed for r in checks.check_onnx(pair, dataset, 'sad', jax_logits))
  with torch.no_grad():
    pair.torch.fusion_bias[0, 1] += 1e-3  # the graph is exported from the torch side's weights
  failed = checks.check_onnx(pair, dataset, 'sad', jax_logits)
  assert len(failed) == 2 and not any(r.passed for r in failed)


def test_swapped_lstm_gates_fail_the_eval_check(dataset):
  pair = pair_for('angry')
  rnn = dict(pair.jax['params']['text_subnet']['rnn'])
  hidden = rnn['weight_hh_l0'].shape[1]
  order = np.r_[0:hidden, 2 * hidden:3 * hidden, hidden:2 * hidden, 3 * hidden:4 * hidden]
  for name in rnn:  # f and g exchanged: a converter that got torch's gate order wrong
    rnn[name] = rnn[name][order]
  pair.jax['params']['text_subnet']['rnn'] = rnn
  result = checks.check_eval_logits(pair, dataset, 'angry')[0]
  assert not result.passed and result.max_diff > 100 * result.tol


def test_adamw_instead_of_adam_with_l2_fails_only_the_optimiser_check(dataset, monkeypatch):
  pair = pair_for('sad', weight_decay=0.01)

  def decoupled(learning_rate, weight_decay):
    return optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)

  monkeypatch.setattr(jax_optimizer, 'torch_adam', decoupled)
  assert checks.check_gradients(pair, dataset, 'sad').passed
  params, stats = checks.check_adam_steps(pair, dataset, 'sad')
  assert not params.passed and params.check == 'adam_50_steps'
  assert stats.passed  # the running statistics do not depend on the optimiser's first steps


class BiasedBatchNorm1d(nn.Module):
  """flax's habit: the biased batch variance folded into the running average."""
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train):
    features = x.shape[-1]
    weight = self.param('weight', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    running_mean = self.variable('batch_stats', 'running_mean', jnp.zeros, (features,))
    running_var = self.variable('batch_stats', 'running_var', jnp.ones, (features,))
    tracked = self.variable('batch_stats', 'num_batches_tracked', jnp.zeros, (), jnp.int32)
    if train:
      mean, var = jnp.mean(x, axis=0), jnp.var(x, axis=0)
      if not self.is_initializing():
        running_mean.value = 0.9 * running_mean.value + 0.1 * mean
        running_var.value = 0.9 * running_var.value + 0.1 * var
        tracked.value = tracked.value + 1
    else:
      mean, var = running_mean.value, running_var.value
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * weight + bias


def test_biased_running_variance_fails_the_running_stats_check(dataset, monkeypatch):
  monkeypatch.setattr(jax_model, 'BatchNorm1d', BiasedBatchNorm1d)
  pair = pair_for('neutral')
  train_logits, running_stats = checks.check_train_forward(pair, dataset, 'neutral')
  assert train_logits.passed  # the batch is normalised the same way...
  assert not running_stats.passed  # ...but the running variance drifts
  assert running_stats.where.endswith('running_var')


def test_failures_name_check_emotion_parameter_and_tolerance():
  failing = checks.Result('gradients', 'sad', 'float32', 3e-4, 1e-5, 'audio_factor')
  assert not failing.passed
  text = str(failing)
  for part in ('gradients', 'sad', 'float32', 'audio_factor', '0.0003', '1e-05', 'FAILED'):
    assert part in text
  assert not checks.Result('x', 'sad', 'float32', float('nan'), 1.0).passed


@pytest.mark.slow
def test_command_writes_json_and_exits_nonzero_only_on_failure(command_run, capsys):
  result, records = command_run
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'max diff' in result.stdout and 'checks passed' in result.stdout
  assert {'check', 'emotion', 'max_diff', 'tol', 'passed'} <= set(records[0])
  assert all(r['passed'] for r in records)
  assert {r['emotion'] for r in records} == {'happy', 'neutral'}  # both presets of --emotion
  # The exit code of a refusal: main's return value is the process's (python -m parity's own
  # refusals in a process are in test_failures.py).
  from parity import __main__ as parity_main  # pylint: disable=import-outside-toplevel
  assert parity_main.main(['--emotion=joy']) == 2
  assert capsys.readouterr().err.startswith("error: unknown emotion 'joy'")


def test_a_failing_check_exits_1_and_still_writes_valid_json(small_data_dir, tmp_path,
                                                            monkeypatch, capsys):
  from parity import __main__ as parity_main  # pylint: disable=import-outside-toplevel
  tight = dict(tolerances.TOLERANCES)
  tight[('eval_logits', 'float32')] = (-1.0, 'impossible on purpose')
  monkeypatch.setattr(tolerances, 'TOLERANCES', tight)
  out = tmp_path / 'parity.json'
  code = parity_main.main([f'--data_path={small_data_dir}', '--emotion=happy', '--dtypes=float32',
                           '--seeds=0', '--epochs=1', f'--json={out}'])
  assert code == 1
  assert 'FAILED: eval_logits [happy, float32]' in capsys.readouterr().err
  failed = [r for r in json.loads(out.read_text()) if not r['passed']]
  assert [r['check'] for r in failed] == ['eval_logits']


def test_torch_device_cpu_is_the_default_and_changes_no_figure(dataset):
  from parity import __main__ as parity_main  # pylint: disable=import-outside-toplevel
  assert parity_main.parse_args([]).torch_device == 'cpu'
  assert checks.torch_choice('cpu') is checks.CPU
  default, chosen = pair_for('sad'), checks.Pair(checks.parity_config('sad'), 'float32',
                                                 checks.torch_choice('cpu'))
  for check in (lambda p: checks.check_eval_logits(p, dataset, 'sad')[0],
                lambda p: checks.check_train_forward(p, dataset, 'sad'),
                lambda p: checks.check_gradients(p, dataset, 'sad')):
    assert check(chosen) == check(default)


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA GPU')
def test_torch_device_cuda_without_a_gpu_is_refused_in_one_line(small_data_dir, capsys):
  from parity import __main__ as parity_main  # pylint: disable=import-outside-toplevel
  code = parity_main.main([f'--data_path={small_data_dir}', '--emotion=happy', '--seeds=0',
                           '--torch_device=cuda'])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith('error: --torch_device=cuda: ') and err.count('\n') == 1
  assert '--device' not in err  # the trainer's flag name is not parity's
  with pytest.raises(SystemExit):
    parity_main.parse_args(['--torch_device=tpu'])


def test_a_non_finite_difference_is_written_as_null():
  record = checks.Result('conversion', 'sad', 'float32', float('inf'), 0.0, 'keys differ').as_dict()
  assert record['max_diff'] is None and record['passed'] is False
  json.dumps(record, allow_nan=False)


@pytest.mark.slow
def test_dropout_on_training_agrees_statistically(small_data_dir, dataset, tmp_path):
  result = checks.check_dropout_training(dataset, 'happy', str(tmp_path), seeds=2, epochs=2)
  assert result.passed, str(result)


@pytest.fixture(scope='module', autouse=True)
def bench_run(request, small_data_dir, tmp_path_factory):
  """`python -m parity.bench` on angry, started when this module starts if its test is to run: its
  three contenders run one after another in fresh processes, beside the tests above. (its --json
  path, the process)"""
  out = tmp_path_factory.mktemp('bench') / 'bench.json'
  with run_helpers.started_for(request, 'test_bench_measures_the_2018_loop_and_both_trainers',
                               [sys.executable, '-m', 'parity.bench', '--emotion=angry',
                                f'--data_path={small_data_dir}', '--epochs=2',
                                f'--json={out}']) as process:
    yield out, process


def test_bench_measures_the_2018_loop_and_both_trainers(bench_run):
  out, process = bench_run
  done = process.finish()
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  figures = json.loads(out.read_text())['emotions']['angry']
  assert sorted(figures) == ['lmf_jax', 'lmf_torch_npu', 'loop_2018']
  for row in figures.values():
    assert row['train_samples_per_s'] > 0 and 0 < row['epoch_s'] < row['first_epoch_s'] + 60
    assert row['epochs_timed'] == 1
  assert figures['loop_2018']['speedup_vs_2018_epoch'] == 1.0
  ratio = figures['loop_2018']['epoch_s'] / figures['lmf_jax']['epoch_s']
  assert figures['lmf_jax']['speedup_vs_2018_epoch'] == pytest.approx(ratio)


@pytest.mark.parametrize('emotion', ['sad', 'neutral'])
def test_forward_flops_count_what_torch_counts_besides_the_lstm(emotion):
  """torch's FLOP counter sees every matmul but nn.LSTM's fused kernel; the LSTM's share is the
  two projections to 4H per step."""
  config = Config(emotion=emotion, **presets.preset(emotion))
  batch = 4
  with torch.no_grad(), FlopCounterMode(display=False) as counter:
    torch_model.from_config(config).eval()(torch.zeros(batch, 74), torch.zeros(batch, 35),
                                           torch.zeros(batch, 20, 300))
  lstm = bench_predict.lstm_flops(config)
  assert lstm == 20 * 2 * (300 * 4 * config.text_hidden + config.text_hidden * 4 * config.text_hidden)
  assert bench_predict.forward_flops(config) - lstm == counter.get_total_flops() // batch


@pytest.mark.slow
def test_the_inference_bench_times_every_contender_in_turns(tmp_path):
  out = tmp_path / 'predict.json'
  assert bench_predict.main(['--emotion=angry', '--rounds=2', '--utterances=64', '--batch_size=32',
                             '--matmul_size=256', f'--json={out}']) == 0
  rows = json.loads(out.read_text())
  assert [r['contender'] for r in rows] == list(bench_predict.CONTENDERS)
  flops = bench_predict.forward_flops(Config(emotion='angry', **presets.preset('angry')))
  for row in rows:
    assert row['emotion'] == 'angry' and row['rounds'] == 2 and row['batch_size'] == 32
    assert 0 < row['samples_per_s'] <= row['best_samples_per_s']
    assert 0 < row['batch1_latency_ms'] < 1000
    assert row['mflop_per_utterance'] == pytest.approx(flops / 1e6)
    assert row['roofline_samples_per_s'] == pytest.approx(row['matmul_gflops'] * 1e9 / flops)
    assert row['of_roofline'] == pytest.approx(row['samples_per_s'] / row['roofline_samples_per_s'])
  assert len({r['matmul_gflops'] for r in rows}) == 1  # one roofline for all contenders
  with pytest.raises(SystemExit) as refused:
    bench_predict.main(['--rounds=0'])
  assert refused.value.code == 2

"""A population sharded over several devices and over several processes (jax.distributed) ends
with the members and the chosen model of the one-device run, on the CPU."""

import os
import socket
import subprocess
import sys

import pytest

from engine import records
from iemocap import files
import run_helpers

FORCE_FOUR = '--xla_force_host_platform_device_count=4'


def population_command(data_dir, workdir, *extra):
  # Five models: they fill neither four devices nor two processes evenly (padding is used).
  return [sys.executable, '-m', 'lmf_jax.train', f'--data_path={data_dir}', '--emotion=sad',
          '--num_seeds=5', '--epochs=6', '--patience=2', '--lr=0.02', '--factor_lr=0.02',
          '--text_hidden=16', '--batch_size=32', '--rank=2', '--audio_hidden=4',
          '--video_hidden=4', f'--workdir={workdir}', *extra]


def environment(xla_flags=''):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return {**env, 'XLA_FLAGS': xla_flags} if xla_flags else env


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def check(result):
  assert result.returncode == 0, result.stderr[-3000:]


def assert_same_population(a, b):
  assert a['chosen_member'] == b['chosen_member']
  for x, y in zip(a['members'], b['members']):
    assert (x['seed'], x['best_epoch'], x['epochs_run'], x['stopped_by']) == (
        y['seed'], y['best_epoch'], y['epochs_run'], y['stopped_by'])
    assert x['best_valid_loss'] == pytest.approx(y['best_valid_loss'], rel=1e-5)
    assert x['f1'] == pytest.approx(y['f1'], abs=0.02)


@pytest.fixture(scope='module')
def populations(small_data_dir, tmp_path_factory):
  """{'one': the one-device run's results, 4: on four devices, 3: four devices limited to three}.

  The three commands run at once: each spends most of its time compiling on one core."""
  root = tmp_path_factory.mktemp('devices')
  runs = {'one': ((), environment()), 4: ((), environment(FORCE_FOUR)),
          3: (('--devices=3',), environment(FORCE_FOUR))}
  done = run_helpers.run_concurrently(*[
      (population_command(small_data_dir, root / str(name), *flags), {'env': env})
      for name, (flags, env) in runs.items()])
  for result in done:
    check(result)
  return {name: files.read_json(root / str(name) / records.RESULTS_JSON) for name in runs}


@pytest.fixture(scope='module')
def one_device(populations):
  return populations['one']


@pytest.mark.slow
def test_four_devices_and_a_limit_of_three_end_as_one(populations):
  for count in (4, 3):
    record = populations[count]
    assert record['device'] == f'cpu:cpu x{count}'
    assert_same_population(record, populations['one'])


@pytest.mark.slow
def test_two_processes_train_one_population_and_process_0_writes_it(small_data_dir, tmp_path,
                                                                    one_device):
  workdir = tmp_path / 'two'
  address = f'localhost:{free_port()}'
  processes = [subprocess.Popen(
      population_command(small_data_dir, workdir, f'--coordinator_address={address}',
                         '--num_processes=2', f'--process_id={i}'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
               for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  assert 'outputs:' in outputs[0][0] and 'outputs:' not in outputs[1][0]
  record = files.read_json(workdir / records.RESULTS_JSON)
  assert record['device'] == 'cpu:cpu x2'
  assert_same_population(record, one_device)


@pytest.mark.parametrize('flags, message', [
    (('--coordinator_address=localhost:1',), 'go together: give all three'),
    (('--coordinator_address=localhost:1', '--num_processes=2', '--process_id=2'),
     r'--process_id=2 must be in \[0, --num_processes=2\)'),
    (('--devices=2',), '--devices=2: this process has 1 jax device'),
])
def test_bad_device_flags_are_one_line(small_data_dir, tmp_path, flags, message):
  result = subprocess.run(population_command(small_data_dir, tmp_path / 'bad', *flags),
                          capture_output=True, text=True, env=environment(), check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and __import__('re').search(message, last), last


def test_device_flags_on_a_single_run_are_one_line(small_data_dir, tmp_path):
  result = subprocess.run([sys.executable, '-m', 'lmf_jax.train', f'--data_path={small_data_dir}',
                           f'--workdir={tmp_path / "single"}', '--devices=1'],
                          capture_output=True, text=True, env=environment(), check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: --devices and several processes shard a population')
  assert not (tmp_path / 'single').exists()

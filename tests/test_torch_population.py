"""torch populations: one trial per member, on Ray or in process, each the lone run of its seed.

These run a real local Ray (the `cluster` extra). On the CPU torch's float32 bits depend on
its thread count, so lone runs are compared under OMP_NUM_THREADS=1, the threads a Ray trial
on one core uses.
"""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine import records
from iemocap import files
from iemocap import metrics
from lmf_torch_npu import train as torch_train
from lmf_torch_npu.device import TorchOptions
import run_helpers

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip('ray')

SEEDS = 4
# A high learning rate makes the members stop at different epochs on the small set.
FLAGS = ['--emotion=sad', '--seed=10', '--epochs=8', '--patience=2', '--lr=0.02',
         '--factor_lr=0.02'] + [f'--{k}={v}' for k, v in run_helpers.SMALL.items()
                                if k not in ('lr', 'factor_lr')]
SAME = ('member', 'seed', 'best_epoch', 'best_valid_loss', 'epochs_run', 'stopped_by', 'f1',
        'accuracy', 'test_loss')


def command(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'lmf_torch_npu.train', f'--data_path={data_dir}',
          f'--workdir={workdir}', *FLAGS, *extra]


def environment(**extra):
  env = {**os.environ, 'RAY_USAGE_STATS_ENABLED': '0', **extra}
  env.pop('RAY_ADDRESS', None)
  return env


def train(data_dir, workdir, *extra, **env):
  process = subprocess.run(command(data_dir, workdir, *extra), capture_output=True, text=True,
                           timeout=240, env=environment(**env))
  assert process.returncode == 0, process.stderr[-3000:]
  return files.read_json(os.path.join(workdir, records.RESULTS_JSON)), process


def trial_dirs(workdir):
  return sorted(os.listdir(os.path.join(workdir, records.TRIALS_DIR)),
                key=lambda name: int(name.split('-')[0]))


def checkpoint_bytes(workdir):
  """Every trial's checkpoint bytes, in member order."""
  return [run_helpers.read_bytes(os.path.join(workdir, records.TRIALS_DIR, name,
                                              records.CHECKPOINT))
          for name in trial_dirs(workdir)]


def members(record):
  return [{k: m[k] for k in SAME} for m in record['members']]


@pytest.fixture(scope='module')
def ray_run(small_data_dir, tmp_path_factory, background):
  """The population on a Ray started by the command (the embedded default). When it ends, the
  commands that need no Ray start in the background (they run beside the lone runs of the first
  test, each on one core, instead of one after another)."""
  workdir = str(tmp_path_factory.mktemp('ray') / 'run')
  record, process = train(small_data_dir, workdir, f'--num_seeds={SEEDS}', '--save_members')
  background.start()
  return workdir, record, process


class Background:
  """The commands of this module that start no Ray: the in-process trials and the two refusals.
  start() starts them together; a test that asks for one not started starts it then.
  [name] -> (its workdir, run_helpers.Started)"""

  def __init__(self, data_dir, root):
    inline, single, dead = (str(root / name) for name in ('inline', 'a', 'b'))
    self.commands = {
        'inline': (inline, command(data_dir, inline, f'--num_seeds={SEEDS}',
                                   '--ray_address=none', '--cpus_per_trial=1')),
        'single': (single, command(data_dir, single, '--ray_address=auto')),
        'dead': (dead, command(data_dir, dead, '--num_seeds=2', '--ray_address=127.0.0.1:1')),
    }
    self.runs = {}

  def start(self, *names):
    for name in names or self.commands:
      if name not in self.runs:
        workdir, argv = self.commands[name]
        self.runs[name] = (workdir, run_helpers.Started(argv, env=environment()))

  def __getitem__(self, name):
    self.start(name)
    return self.runs[name]

  def kill(self):
    for _, process in self.runs.values():
      process.kill()


@pytest.fixture(scope='module')
def background(small_data_dir, tmp_path_factory):
  runs = Background(small_data_dir, tmp_path_factory.mktemp('background'))
  try:
    yield runs
  finally:
    runs.kill()


def test_each_trial_is_its_lone_run_and_the_population_chooses_on_validation(
    ray_run, small_data_dir, tmp_path):
  workdir, record, process = ray_run
  assert 'trials: 4 done, 0 running, 0 pending; best valid loss so far' in process.stderr
  assert 'on Ray, up to' in record['device']
  stopped_at = {m['epochs_run'] for m in record['members']}
  assert len(stopped_at) > 1, stopped_at
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # what a Ray trial on one core runs with
  try:
    for member in record['members']:
      config = run_helpers.small_config(small_data_dir, tmp_path / f'lone{member["seed"]}',
                                        seed=member['seed'], epochs=8, patience=2, lr=0.02,
                                        factor_lr=0.02)
      lone = torch_train.train_and_evaluate(config, TorchOptions(device='cpu'))
      assert {k: lone[k] for k in SAME if k != 'member'} == \
          {k: member[k] for k in SAME if k != 'member'}
      assert run_helpers.read_bytes(os.path.join(config.workdir, records.CHECKPOINT)) == \
          checkpoint_bytes(workdir)[member['member']]
  finally:
    torch.set_num_threads(threads)
  chosen = min(record['members'], key=lambda m: m['best_valid_loss'])
  assert record['chosen_member'] == chosen['member'] and record['f1'] == chosen['f1']
  best = os.path.join(workdir, records.TRIALS_DIR, trial_dirs(workdir)[chosen['member']],
                      records.CHECKPOINT)
  import safetensors.numpy  # pylint: disable=import-outside-toplevel
  chosen_arrays = safetensors.numpy.load_file(os.path.join(workdir, records.CHECKPOINT))
  trial_arrays = safetensors.numpy.load_file(best)
  assert all((chosen_arrays[k] == trial_arrays[k]).all() for k in trial_arrays)
  for m in record['members']:
    assert os.path.exists(os.path.join(workdir, records.member_checkpoint(m['member'], m['seed'])))
  history = records.read_metrics(workdir)
  assert sorted(history[0]['valid_loss']) == ['0', '1', '2', '3']
  assert len(history) == max(stopped_at)


def test_in_process_trials_equal_the_ray_trials(ray_run, background):
  workdir, record, _ = ray_run
  inline, started = background['inline']
  process = started.finish(timeout=240)
  assert process.returncode == 0, process.stderr[-3000:]
  inline_record = files.read_json(os.path.join(inline, records.RESULTS_JSON))
  assert 'one trial after another in this process' in inline_record['device']
  assert members(inline_record) == members(record)
  assert checkpoint_bytes(inline) == checkpoint_bytes(workdir)
  assert run_helpers.read_bytes(os.path.join(inline, records.CHECKPOINT)) == \
      run_helpers.read_bytes(os.path.join(workdir, records.CHECKPOINT))


def _wait_for(predicate, process, what, timeout=120):
  """The predicate's first true value, polled while the process runs."""
  deadline = time.monotonic() + timeout
  while not (value := predicate()):
    assert process.poll() is None, f'the command ended before {what}: {process.stderr.read()}'
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.05)
  return value


def _stop_with_sigint(process, ready, what, message, group=False):
  """SIGINT once `ready()` holds, to the command or (`group`, for a command started in a session
  of its own) to its whole process group, Ray's processes included, as Ctrl-C in a terminal
  sends it; the command must exit 130 with a last line starting with `message` and naming
  --resume. Returns ready()'s value."""
  try:
    value = _wait_for(ready, process, what)
    if group:
      os.killpg(process.pid, signal.SIGINT)
    else:
      process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 130, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith(message) and '--resume' in last, last
  return value


def _trial_pid(trial):
  """The pid in a trial's lock file (its holder), once one holds it and has saved an epoch."""
  try:
    holder = open(os.path.join(trial, records.LOCK), encoding='utf-8').read()
  except OSError:
    return None
  if not holder or not os.path.exists(os.path.join(trial, records.TRAIN_STATE)):
    return None
  return int(holder.split()[1])


def test_a_killed_trial_worker_is_retried_and_ends_bitwise_equal(ray_run, small_data_dir,
                                                                 tmp_path):
  workdir, record, _ = ray_run
  killed = str(tmp_path / 'killed')
  trial = os.path.join(killed, records.TRIALS_DIR, '0-seed10')
  process = subprocess.Popen(command(small_data_dir, killed, f'--num_seeds={SEEDS}'),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment())
  try:
    _wait_for(lambda: _trial_pid(trial), process, 'trial 0 saved an epoch')
    pid = _trial_pid(trial)
    assert pid != process.pid  # the trial runs in a Ray worker, not in the command
    os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=240)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-3000:]  # Ray ran the trial again, which resumed
  assert members(files.read_json(os.path.join(killed, records.RESULTS_JSON))) == members(record)
  assert checkpoint_bytes(killed) == checkpoint_bytes(workdir)


def test_sigint_stops_and_resume_on_ray_skips_the_finished_trials(ray_run, small_data_dir,
                                                                  tmp_path):
  """Stopped in process (one trial after another: the stop lands while trials remain), resumed
  on Ray: the scheduler is not part of a population, its one-thread trials are the same."""
  workdir, record, _ = ray_run
  cut = str(tmp_path / 'cut')
  here = ['--ray_address=none', '--cpus_per_trial=1']
  process = subprocess.Popen(command(small_data_dir, cut, f'--num_seeds={SEEDS}', *here),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment())
  first = os.path.join(cut, records.TRIALS_DIR, '0-seed10', records.RESULTS_JSON)
  _stop_with_sigint(process, lambda: os.path.exists(first), 'trial 0 finished',
                    'error: stopped by SIGINT')
  finished = {d: os.stat(os.path.join(cut, records.TRIALS_DIR, d, records.RESULTS_JSON))
              .st_mtime_ns for d in trial_dirs(cut)
              if os.path.exists(os.path.join(cut, records.TRIALS_DIR, d, records.RESULTS_JSON))}
  assert '0-seed10' in finished and len(finished) < SEEDS, finished
  refused = subprocess.run(command(small_data_dir, cut, f'--num_seeds={SEEDS}', *here),
                           capture_output=True, text=True, timeout=120, env=environment())
  assert refused.returncode != 0 and 'pass --resume' in refused.stderr.strip().splitlines()[-1]
  resumed, _ = train(small_data_dir, cut, f'--num_seeds={SEEDS}', '--resume')  # on Ray
  for d, mtime in finished.items():  # reported, not trained again
    assert os.stat(os.path.join(cut, records.TRIALS_DIR, d,
                                records.RESULTS_JSON)).st_mtime_ns == mtime
  assert members(resumed) == members(record)
  assert checkpoint_bytes(cut) == checkpoint_bytes(workdir)


@pytest.mark.parametrize('group', [False, True], ids=['to the command', 'to its process group'])
def test_sigint_cancels_the_running_ray_trials(small_data_dir, tmp_path, group):
  """Trials long enough (40 epochs each) that none can end before the stop lands. Ctrl-C in a
  terminal signals Ray's own processes too, a `kill -INT` the command alone."""
  stopped = str(tmp_path / 'stopped')
  process = subprocess.Popen(command(small_data_dir, stopped, '--num_seeds=2', '--epochs=40',
                                     '--patience=40'),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment(), start_new_session=group)
  trial = os.path.join(stopped, records.TRIALS_DIR, '0-seed10')
  worker = _stop_with_sigint(process, lambda: _trial_pid(trial), 'trial 0 saved an epoch',
                             'error: stopped by SIGINT: 0 of 2 trials finished', group)
  assert not glob.glob(os.path.join(stopped, '**', records.RESULTS_JSON), recursive=True)
  rows = records.read_metrics(trial)
  assert rows and [r['epoch'] for r in rows] == list(range(1, len(rows) + 1))
  deadline = time.monotonic() + 30  # Ray's worker ends with the command's Ray, soon after
  while _alive(worker):
    assert time.monotonic() < deadline, f'trial worker {worker} still runs'
    time.sleep(0.1)


def _alive(pid):
  """Whether `pid` runs (an exited, unreaped zombie does not)."""
  try:
    with open(f'/proc/{pid}/status', encoding='utf-8') as f:
      return not any(line.startswith('State:') and 'Z' in line.split()[1] for line in f)
  except FileNotFoundError:
    return False


def test_the_8p_script_on_a_running_ray_cluster_gives_the_embedded_result(ray_run, small_data_dir,
                                                                         tmp_path):
  """train_full_8p.sh with RANK_SIZE trials (4 here, to match ray_run), joining a head node
  started here: the same members, bitwise, and the lines ModelZoo tools parse."""
  workdir, record, _ = ray_run
  ray_cli = os.path.join(os.path.dirname(sys.executable), 'ray')
  port = '6391'
  env = environment()
  started = subprocess.run([ray_cli, 'start', '--head', f'--port={port}', '--num-cpus=2',
                            '--include-dashboard=false', '--disable-usage-stats'],
                           capture_output=True, text=True, timeout=120, env=env)
  assert started.returncode == 0, started.stderr[-3000:]
  out = tmp_path / 'out'
  script = os.path.join(os.path.dirname(__file__), '..', 'lmf_torch_npu', 'scripts',
                        'train_full_8p.sh')
  try:
    # An address names a remote cluster to Ray, which then sends a token only when told to.
    result = subprocess.run(
        ['bash', script, f'--data_url={small_data_dir}', f'--train_url={out}', *FLAGS,
         f'--ray_address=127.0.0.1:{port}'],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env=environment(PYTHON=sys.executable, RANK_SIZE=str(SEEDS), RAY_AUTH_MODE='token',
                        CANN_SET_ENV=str(tmp_path / 'no_cann.sh')))
  finally:
    subprocess.run([ray_cli, 'stop', '--force'], capture_output=True, timeout=120, env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  joined = out / f'sad-{SEEDS}p'
  joined_record = files.read_json(joined / records.RESULTS_JSON)
  assert members(joined_record) == members(record)
  assert checkpoint_bytes(joined) == checkpoint_bytes(workdir)
  lines = result.stdout.strip().splitlines()
  fps = sum(m['train_samples_per_s'] for m in joined_record['members'])
  assert f'Final Performance images/sec : {fps:.2f}' in lines  # the sum over the trials
  assert f'Final Test F1 : {100 * record["f1"]:.2f}' in lines
  assert f'Trials : {SEEDS}, test F1 mean {100 * record["f1_mean"]:.2f} +- ' \
         f'{100 * record["f1_std"]:.2f}' in lines
  assert any(line.startswith('E2E Training Duration sec : ') for line in lines)


def test_a_sentiment_population_on_ray_is_its_population_in_process(tmp_path):
  """Regression targets through Ray trials (the default synthetic MOSI stand-in): the same
  members, figures and chosen checkpoint, bitwise, as the trials run one after another here."""
  common = [sys.executable, '-m', 'lmf_torch_npu.train', '--emotion=sentiment', '--seed=3',
            '--num_seeds=2', '--epochs=2', *[f'--{k}={v}' for k, v in run_helpers.SMALL.items()]]
  on_ray, inline = str(tmp_path / 'ray'), str(tmp_path / 'inline')
  done = run_helpers.run_concurrently(
      ([*common, f'--workdir={on_ray}'], {'env': environment()}),
      ([*common, f'--workdir={inline}', '--ray_address=none', '--cpus_per_trial=1'],
       {'env': environment()}), timeout=300)
  for result in done:
    assert result.returncode == 0, result.stderr[-3000:]
  ray_record, inline_record = (files.read_json(os.path.join(w, records.RESULTS_JSON))
                               for w in (on_ray, inline))
  assert 'on Ray, up to' in ray_record['device']
  assert ray_record['task'] == 'regression' and ray_record['num_models'] == 2
  figures = ('member', 'seed', 'best_epoch', 'best_valid_loss', 'epochs_run', 'test_loss',
             *metrics.FIGURES['regression'])
  assert [{k: m[k] for k in figures} for m in ray_record['members']] == \
      [{k: m[k] for k in figures} for m in inline_record['members']]
  assert all(isinstance(m['mae'], float) and isinstance(m['acc7'], float)
             for m in ray_record['members'])  # MOSI's figures, not classification's
  assert ray_record['mae_mean'] == inline_record['mae_mean']
  assert checkpoint_bytes(on_ray) == checkpoint_bytes(inline)


def test_population_flags_are_refused_on_a_single_run_and_a_dead_address_is_one_line(
    background):
  single = background['single'][1].finish(timeout=120)
  assert single.returncode == 2
  assert single.stderr.strip().splitlines()[-1].startswith('error: --ray_address is for a '
                                                           'population')
  dead_dir, started = background['dead']
  dead = started.finish(timeout=180)
  assert dead.returncode == 2, dead.stderr[-2000:]
  assert dead.stderr.strip().splitlines()[-1].startswith('error: --ray_address=127.0.0.1:1')
  assert not os.path.exists(dead_dir)

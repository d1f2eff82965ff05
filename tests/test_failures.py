"""Every failure a user can meet ends in one line, a non-zero exit, and nothing of theirs lost.

Each test drives the public command lines (`python -m lmf_jax.train`, `lmf_torch_npu.train`,
both `evaluate`s) the way a user or a scheduler would: bad paths, full disks, signals, two
processes on one workdir, damaged files, bad flags.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy

from engine import datasets
from engine import records
from engine import workdirs
from iemocap import files
from iemocap.files import temporary_prefix
from run_helpers import assert_one_line
from run_helpers import run_concurrently

SMALL_FLAGS = ('--text_hidden=16', '--batch_size=32', '--audio_hidden=8', '--video_hidden=4',
               '--rank=4')
TRAINERS = ('lmf_jax.train', 'lmf_torch_npu.train')
EVALUATES = ('lmf_jax.evaluate', 'lmf_torch_npu.evaluate')
BAD_FOR_EVALUATE = ('not_json', 'nan_weights')
COMPILATION_CACHE = 'jax-compilation-cache'  # below LMF_CACHE_DIR (lmf_jax.train)


def command(module, *args):
  return [sys.executable, '-m', module, *args]


def run_cli(module, *args, env=None, cwd=None, **kwargs):
  return subprocess.run(command(module, *args), capture_output=True, text=True, check=False,
                        env={**os.environ, **(env or {})}, cwd=cwd, **kwargs)


def train_args(data_dir, workdir, *extra):
  return (f'--data_path={data_dir}', f'--workdir={workdir}', '--emotion=sad', '--seed=1',
          *SMALL_FLAGS, *extra)


def leftover_temporary_files(workdir):
  """atomic_write's temporary files: `.<output name>.` and mkstemp's 8 characters."""
  return [name for name in os.listdir(workdir)
          if any(re.fullmatch(re.escape(temporary_prefix(output)) + '[a-z0-9_]{8}', name)
                 for output in records.OUTPUTS)]


# --- Command lines that end before any epoch, run together ---------------------------------

OUTPUT_FLAGS = [('parity', '--json'), ('parity.bench', '--json'), ('parity.gpu_check', '--out')]
OWN_FILES = [records.RESULTS_CSV, records.METRICS_JSONL, records.LOSS_CURVE]
DAMAGED_CONFIGS = [
    ('{"config": ', 'config.json is not valid JSON'),
    ('[1, 2]', 'config.json is not a run configuration written by this project'),
]
BAD_FLAGS = [
    ('lmf_jax.train', '--lr=inf', 'lr=inf must be a finite number'),
    ('lmf_torch_npu.train', '--lr=inf', 'lr=inf must be a finite number'),
    ('lmf_jax.train', '--factor_lr=nan', 'factor_lr=nan must be a finite number'),
    ('lmf_jax.train', '--weight_decay=-inf', 'weight_decay=-inf must be a finite number'),
    ('lmf_jax.train', 'stray', "unexpected argument 'stray': flags are written --name=value"),
    ('lmf_torch_npu.train', 'stray', "unexpected argument 'stray'"),
    ('lmf_torch_npu.evaluate', 'stray', "unexpected argument 'stray'"),
    ('lmf_jax.train', '--no_such_flag=1', "Unknown command line flag 'no_such_flag': see --help"),
    ('lmf_torch_npu.train', '--epochs=many', "flag --epochs=many: .* see --help"),
    ('lmf_jax.evaluate', '--split=dev', "flag --split=dev: .* see --help"),
]


def refusal_cases(data_dir):
  """{case: prepare(directory) -> the command (or (command, Popen options))}: the command lines of
  this module that end before any epoch and need nothing but their own empty directory."""
  cases = {}

  def a_file(directory):
    (directory / 'a_file').write_text('mine')
    return directory / 'a_file'

  for module in TRAINERS:
    cases['workdir_is_a_file', module] = lambda d, module=module: command(
        module, *train_args(data_dir, a_file(d), '--epochs=1'))
  cases['workdir_below_a_file'] = lambda d: command(
      'lmf_jax.train', *train_args(data_dir, a_file(d) / 'run', '--epochs=1'))
  cases['unwritable_cache'] = lambda d: (
      command('lmf_jax.train', f'--workdir={d / "run"}', '--epochs=1'),
      {'env': {**os.environ, 'LMF_CACHE_DIR': str(a_file(d) / 'cache')}})
  for module, flag in OUTPUT_FLAGS:
    cases['output_below_a_file', module] = lambda d, module=module, flag=flag: command(
        module, f'{flag}={a_file(d) / "out.json"}')
    cases['unknown_option', module] = lambda d, module=module: command(module, '--no_such_option')

  def lock_link(directory):
    (directory / 'run').mkdir()
    (directory / 'precious').write_text('mine')
    (directory / 'run' / records.LOCK).symlink_to(directory / 'precious')
    return command('lmf_jax.train', *train_args(data_dir, directory / 'run', '--epochs=1'))

  cases['lock_link'] = lock_link

  def workdir_holding(name, content):
    def prepare(directory):
      (directory / 'run').mkdir()
      (directory / 'run' / name).write_text(content)
      return command('lmf_jax.train', *train_args(data_dir, directory / 'run', '--epochs=1'))
    return prepare

  for name in OWN_FILES:
    cases['own_file', name] = workdir_holding(name, 'the user\'s own')
  for content, _ in DAMAGED_CONFIGS:
    cases['damaged_config', content] = workdir_holding(records.CONFIG_JSON, content)
  for module, flag, _ in BAD_FLAGS:
    if module.endswith('evaluate'):
      cases['bad_flag', module, flag] = lambda d, module=module, flag=flag: command(
          module, f'--checkpoint={d}', flag)
    else:
      cases['bad_flag', module, flag] = lambda d, module=module, flag=flag: command(
          module, *train_args(data_dir, d / 'run', '--epochs=1'), flag)
  return cases


def run_cases(cases, root, at_once=4):
  """{case: (CompletedProcess, its directory)}: each case prepared in a directory of its own below
  `root`, then all run together, `at_once` at a time."""
  directories, runs = {}, []
  for key, prepare in cases.items():
    directories[key] = root / f'case{len(directories)}'
    directories[key].mkdir()
    runs.append(prepare(directories[key]))
  results = run_concurrently(*runs, at_once=at_once)
  return {key: (result, directories[key]) for key, result in zip(cases, results)}


@pytest.fixture(scope='module')
def refusals(small_data_dir, tmp_path_factory):
  """The refusal_cases, run together when the first test asks for one: each command spends its
  few seconds importing, mostly on one core, so one after another they took twice as long."""
  return run_cases(refusal_cases(small_data_dir), tmp_path_factory.mktemp('refusals'))


# --- Paths that cannot be written -----------------------------------------------------------

@pytest.mark.parametrize('module', TRAINERS)
def test_a_workdir_that_is_a_file_is_refused(refusals, module):
  result, directory = refusals['workdir_is_a_file', module]
  assert_one_line(result, 'is a file: choose a directory for --workdir')
  assert (directory / 'a_file').read_text() == 'mine'


def test_a_workdir_below_a_file_is_one_line(refusals):
  result, _ = refusals['workdir_below_a_file']
  assert_one_line(result, r'Not a directory .*a part of the path is a file')


@pytest.mark.slow
def test_a_file_size_limit_stops_the_run_in_one_line_and_resume_finishes_it(small_data_dir,
                                                                            tmp_path):
  workdir = tmp_path / 'run'
  limit = 16 * 1024  # config.json and metrics fit; the first checkpoint does not

  # Its compiled programs come from a copy of the session's cache: under the limit jax's cache
  # writes entries cut at 16 KB (not atomically), which every later process of the session would
  # read as damaged and compile again.
  cache = tmp_path / 'cache'
  shared = os.path.join(os.environ['LMF_CACHE_DIR'], COMPILATION_CACHE)
  if os.path.isdir(shared):
    shutil.copytree(shared, cache / COMPILATION_CACHE)
  args = train_args(small_data_dir, workdir, '--epochs=3', '--patience=3')
  # The limit is set by a small Python that then becomes the command: a preexec_fn would run
  # in a fork of this multithreaded process.
  limited = [sys.executable, '-c', 'import os, resource, sys; '
             f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); '
             'os.execv(sys.argv[1], sys.argv[1:])']
  cut = subprocess.run(limited + command('lmf_jax.train', *args), capture_output=True, text=True,
                       check=False, env={**os.environ, 'LMF_CACHE_DIR': str(cache)})
  assert_one_line(cut, r'File too large \(.*checkpoint.safetensors\).*ulimit -f.*rerun the '
                  'same command')
  assert not workdir.exists()  # cut before its first epoch: the new run took its files back
  again = run_cli('lmf_jax.train', *args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert files.read_json(workdir / records.RESULTS_JSON)['epochs_run'] == 3


@contextlib.contextmanager
def small_file_system(path, size, options=''):
  """A tmpfs of `size` mounted at `path` (root only), unmounted afterwards."""
  path.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}{options}', 'tmpfs',
                            str(path)],
                           capture_output=True, check=False)
  if mounted.returncode != 0:
    pytest.skip('cannot mount a tmpfs here (needs root): the full-disk check runs in CI')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)


def test_a_full_disk_is_one_line_and_leaves_complete_files(small_data_dir, tmp_path):
  with small_file_system(tmp_path / 'disk', '48k') as disk:
    result = run_cli('lmf_jax.train', *train_args(small_data_dir, disk / 'run', '--epochs=2'))
    assert_one_line(result, r'No space left on device .*the disk is full: free space')
    assert not (disk / 'run').exists()  # no partial files, and the workdir free for a rerun


def test_a_read_only_file_system_is_one_line(small_data_dir, tmp_path):
  # chmod cannot stop root (CI runs as root); a read-only mount can.
  with small_file_system(tmp_path / 'disk', '48k', ',ro') as disk:
    result = run_cli('lmf_jax.train', *train_args(small_data_dir, disk / 'run', '--epochs=1'))
    assert_one_line(result, r'Read-only file system .*choose a writable directory')


@pytest.mark.slow
def test_a_finished_run_on_read_only_storage_is_reported(small_data_dir, tmp_path):
  with small_file_system(tmp_path / 'disk', '4m') as disk:
    args = train_args(small_data_dir, disk / 'run', '--epochs=1')
    assert run_cli('lmf_jax.train', *args).returncode == 0
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    again = run_cli('lmf_jax.train', *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'already holds the finished run' in again.stderr and 'weighted F1' in again.stdout


def test_an_unwritable_cache_directory_names_lmf_cache_dir(refusals):
  result, directory = refusals['unwritable_cache']
  assert_one_line(result, r'cannot write the synthetic data set .* set LMF_CACHE_DIR')
  assert (directory / 'a_file').read_text() == 'mine'


@pytest.mark.parametrize('module, flag', OUTPUT_FLAGS)
def test_an_output_file_below_a_file_is_refused_before_any_work(refusals, module, flag):
  result, directory = refusals['output_below_a_file', module]
  unknown, _ = refusals['unknown_option', module]
  assert_one_line(result, rf'{flag}=.*a file is in the way: choose another path')
  assert (directory / 'a_file').read_text() == 'mine'
  assert_one_line(unknown,
                  rf'unrecognized arguments: --no_such_option: see python -m {module} --help')


# --- Signals --------------------------------------------------------------------------------

def wait_for(predicate, timeout=120):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.05)


SIGNAL_CASES = [('lmf_jax.train', signal.SIGINT, ()), ('lmf_torch_npu.train', signal.SIGTERM, ()),
                ('lmf_jax.train', signal.SIGTERM, ('--num_seeds=2',))]
SIGNAL_EPOCHS = 60  # the signal is handled within milliseconds; the run has seconds left


@pytest.fixture(scope='module')
def signalled(small_data_dir, tmp_path_factory):
  """The SIGNAL_CASES side by side, step by step: each run started, signalled once it has saved
  an epoch, then each command rerun without --resume, then with it (the reruns of the three at
  once: each spends most of its time on one core). {case: what each step left}"""
  cases = {}
  for module, signum, population in SIGNAL_CASES:
    workdir = tmp_path_factory.mktemp('signal') / 'run'
    args = train_args(small_data_dir, workdir, f'--epochs={SIGNAL_EPOCHS}',
                      f'--patience={SIGNAL_EPOCHS}', *population)
    # torch's 2-thread OpenMP pool stalls whenever another process holds a core (tests run
    # beside others on a 2-core machine); the signal handling is the same on one thread.
    env = {**os.environ, 'OMP_NUM_THREADS': '1'} if 'torch' in module else dict(os.environ)
    cases[module, signum, population] = {
        'workdir': workdir, 'args': args, 'env': env,
        'process': subprocess.Popen(command(module, *args), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)}
  try:
    waiting = dict(cases)
    deadline = time.monotonic() + 120
    while waiting:
      for key, case in list(waiting.items()):
        if (case['workdir'] / records.TRAIN_STATE).exists():
          case['process'].send_signal(key[1])
          del waiting[key]
      assert time.monotonic() < deadline, 'timed out'
      time.sleep(0.05)
    for case in cases.values():
      process = case['process']
      _, stderr = process.communicate(timeout=120)
      case['stopped'] = subprocess.CompletedProcess(process.args, process.returncode, '', stderr)
      case['epochs_when_stopped'] = [row['epoch'] for row in records.read_metrics(case['workdir'])]
    refused = run_concurrently(*((command(key[0], *case['args']), {'env': case['env']})
                                 for key, case in cases.items()))
    finished = run_concurrently(*((command(key[0], *case['args'], '--resume'), {'env': case['env']})
                                  for key, case in cases.items()))
    for case, again, resumed in zip(cases.values(), refused, finished):
      case['refused'], case['finished'] = again, resumed
    return cases
  finally:
    for case in cases.values():
      case['process'].kill()
      case['process'].wait()


@pytest.mark.slow
@pytest.mark.parametrize('module, signum, population', SIGNAL_CASES)
def test_a_signal_stops_after_a_saved_epoch_and_resume_continues(signalled, module, signum,
                                                                 population):
  case = signalled[module, signum, population]
  workdir, epochs = case['workdir'], SIGNAL_EPOCHS
  last = assert_one_line(case['stopped'], rf'stopped by {signum.name} after epoch \d+, which is '
                         r'saved in .*rerun the same command with --resume', code=128 + signum)
  stopped_at = int(re.search(r'after epoch (\d+)', last).group(1))
  assert stopped_at < epochs
  assert case['epochs_when_stopped'] == list(range(1, stopped_at + 1))
  assert_one_line(case['refused'], 'holds an interrupted run: pass --resume')
  finished = case['finished']
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert [row['epoch'] for row in records.read_metrics(workdir)] == list(range(1, epochs + 1))
  assert files.read_json(workdir / records.RESULTS_JSON)['epochs_run'] == epochs


def test_the_first_signal_asks_for_a_stop_and_the_second_stops_at_once():
  from engine import cli  # pylint: disable=import-outside-toplevel
  from engine.errors import StopRequested  # pylint: disable=import-outside-toplevel
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    stop = cli.StopOnSignal().install()
    stop.check(1)  # nothing received: the run goes on
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(StopRequested) as requested:
      stop.check(2)
    assert (requested.value.reason, requested.value.exit_code) == ('SIGTERM', 143)
    with pytest.raises(KeyboardInterrupt) as now:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs here, in the main thread
    assert now.value.args == (signal.SIGINT,)
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


# --- Two processes, one workdir -------------------------------------------------------------

@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_holder_does_not_block(small_data_dir,
                                                                        tmp_path):
  workdir = tmp_path / 'run'
  args = train_args(small_data_dir, workdir, '--epochs=100000', '--patience=100000')  # killed
  first = subprocess.Popen(command('lmf_jax.train', *args), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    wait_for(lambda: (workdir / records.TRAIN_STATE).exists())
    second, other_backend = run_concurrently(
        command('lmf_jax.train', *args, '--resume'),
        command('lmf_torch_npu.train', *train_args(small_data_dir, workdir, '--epochs=1')))
    assert_one_line(second, rf'is in use by pid {first.pid} on \S+: wait for it')
    assert_one_line(other_backend, 'is in use by pid')
  finally:
    first.kill()  # kill -9: no clean-up runs
    first.wait()
  with workdirs.workdir_lock(str(workdir)):  # the dead holder's lock went with it
    pass


@pytest.mark.slow
def test_the_lock_is_held_for_the_whole_run(small_data_dir, tmp_path):
  workdir = tmp_path / 'run'
  with workdirs.workdir_lock(str(workdir)):
    result = run_cli('lmf_jax.train', *train_args(small_data_dir, workdir, '--epochs=1'))
    assert_one_line(result, rf'is in use by pid {os.getpid()} on ')
  assert not (workdir / records.CONFIG_JSON).exists()
  done = run_cli('lmf_jax.train', *train_args(small_data_dir, workdir, '--epochs=1'))
  assert done.returncode == 0, done.stderr[-2000:]


def test_a_lock_file_that_is_a_link_is_refused(refusals):
  result, directory = refusals['lock_link']
  assert_one_line(result, 'is a symbolic link, not this project\'s lock file')
  assert (directory / 'precious').read_text() == 'mine'


# --- Files that are not ours, or damaged ----------------------------------------------------

@pytest.mark.parametrize('name', OWN_FILES)
def test_a_users_own_files_in_a_fresh_workdir_are_never_replaced(refusals, name):
  result, directory = refusals['own_file', name]
  workdir = directory / 'run'
  assert_one_line(result, rf'already holds {re.escape(name)} but no config.json')
  assert (workdir / name).read_text() == 'the user\'s own'
  assert not (workdir / records.CONFIG_JSON).exists()


@pytest.mark.parametrize('content, pattern', DAMAGED_CONFIGS)
def test_a_damaged_or_foreign_config_json_is_one_line(refusals, content, pattern):
  result, directory = refusals['damaged_config', content]
  workdir = directory / 'run'
  assert_one_line(result, pattern)
  assert (workdir / records.CONFIG_JSON).read_text() == content


@pytest.fixture(scope='module')
def interrupted_run(small_data_dir, tmp_path_factory):
  """A workdir whose run stopped after epoch 2 of 3 (a SIGINT-free stand-in: --epochs=2, then
  the finished marker removed and config.json asking for 3 epochs)."""
  workdir = tmp_path_factory.mktemp('interrupted') / 'run'
  result = run_cli('lmf_jax.train', *train_args(small_data_dir, workdir, '--epochs=2',
                                                 '--patience=5'))
  assert result.returncode == 0, result.stderr[-2000:]
  (workdir / records.RESULTS_JSON).unlink()
  saved = files.read_json(workdir / records.CONFIG_JSON)
  saved['config']['epochs'] = 3
  files.write_json(workdir / records.CONFIG_JSON, saved)
  return workdir


def copy_run(source, target):
  target.mkdir(parents=True)
  for name in os.listdir(source):
    if os.path.isfile(source / name):
      (target / name).write_bytes((source / name).read_bytes())
  return target


def resume_args(small_data_dir, workdir):
  return train_args(small_data_dir, workdir, '--epochs=3', '--patience=5', '--resume')


def after_interrupted_cases(data_dir, interrupted):
  """{case: prepare(directory) -> command}: the command lines that resume a copy of the
  interrupted run (one finishes it, two are refused), evaluate its checkpoint rewritten, and one
  that trains a workdir a kill left before its first epoch."""

  def copy_of_the_run(directory, change=None):
    workdir = copy_run(interrupted, directory / 'run')
    if change:
      change(workdir)
    return workdir

  def relative_data_path_and_temporary_files(directory):
    workdir = copy_of_the_run(directory)
    saved = files.read_json(workdir / records.CONFIG_JSON)
    saved['config']['data_path'] = os.path.relpath(data_dir, directory)  # as older runs did
    files.write_json(workdir / records.CONFIG_JSON, saved)
    (workdir / (temporary_prefix(records.TRAIN_STATE) + 'x1y2z3_9')).write_bytes(b'\0' * 4096)
    (workdir / 'notes.txt').write_text('the user\'s own')
    (workdir / '.results.json.bak').write_text('the user\'s own')
    return command('lmf_jax.train', *resume_args(data_dir, workdir)), {'cwd': directory}

  def damaged_metrics_line(workdir):
    with open(workdir / records.METRICS_JSONL, 'a', encoding='utf-8') as f:
      f.write('{"epoch": 3, "train_lo\n')

  def train_state_without_progress(workdir):
    path = workdir / records.TRAIN_STATE
    arrays = safetensors.numpy.load_file(str(path))
    path.write_bytes(safetensors.numpy.save(arrays))  # the same tensors, no metadata

  def killed_before_its_first_epoch(directory):
    from run_helpers import small_config  # pylint: disable=import-outside-toplevel
    workdir = directory / 'run'
    workdirs.prepare_workdir(small_config(data_dir, workdir, lr=0.5), 'jax', {}, False)
    # config.json alone, of other flags, as a kill -9 during compilation leaves it.
    return command('lmf_jax.train', *train_args(data_dir, workdir, '--epochs=1'))

  def moved_data(directory, *extra):
    stored = rewrite_checkpoint(interrupted / records.CHECKPOINT, directory / 'ok.safetensors')
    rewrite_checkpoint(interrupted / records.CHECKPOINT, directory / 'moved.safetensors',
                       with_config(stored, data_path=str(directory / 'moved_away')))
    return command('lmf_jax.evaluate', f'--checkpoint={directory / "moved.safetensors"}', *extra)

  cases = {
      ('evaluate_bad', module, case): lambda d, module=module, case=case: command(
          module, f'--checkpoint={bad_checkpoints(interrupted / records.CHECKPOINT, d)[case][0]}')
      for module in EVALUATES for case in BAD_FOR_EVALUATE}
  return {
      **cases,
      'moved': moved_data,
      'moved_elsewhere': lambda d: moved_data(d, f'--data_path={data_dir}'),
      'relative_data_path': relative_data_path_and_temporary_files,
      'damaged_metrics': lambda d: command('lmf_jax.train', *resume_args(
          data_dir, copy_of_the_run(d, damaged_metrics_line))),
      'no_progress': lambda d: command('lmf_jax.train', *resume_args(
          data_dir, copy_of_the_run(d, train_state_without_progress))),
      'killed_before_first_epoch': killed_before_its_first_epoch,
  }


@pytest.fixture(scope='module')
def after_interrupted(small_data_dir, interrupted_run, tmp_path_factory):
  """The after_interrupted_cases, run together (each mostly on one core) when the first test
  asks."""
  return run_cases(after_interrupted_cases(small_data_dir, interrupted_run),
                   tmp_path_factory.mktemp('after_interrupted'))


def test_a_run_killed_before_its_first_epoch_leaves_the_workdir_to_the_next_command(
    after_interrupted):
  result, directory = after_interrupted['killed_before_first_epoch']
  assert result.returncode == 0, result.stderr[-2000:]
  assert files.read_json(directory / 'run' / records.CONFIG_JSON)['config']['lr'] != 0.5


def test_resume_recognises_a_relative_data_path_and_cleans_temporary_files_left_by_a_kill(
    after_interrupted):
  """One resume of one workdir that holds both: config.json's data_path relative to the
  command's directory, as older runs stored it, and a killed process's temporary files."""
  result, directory = after_interrupted['relative_data_path']
  workdir = directory / 'run'
  stale = workdir / (temporary_prefix(records.TRAIN_STATE) + 'x1y2z3_9')  # mkstemp's 8 characters
  assert result.returncode == 0, result.stderr[-2000:]
  assert not stale.exists() and not leftover_temporary_files(workdir)
  assert (workdir / 'notes.txt').read_text() == 'the user\'s own'
  assert (workdir / '.results.json.bak').read_text() == 'the user\'s own'
  assert files.read_json(workdir / records.RESULTS_JSON)['epochs_run'] == 3


def test_a_damaged_metrics_line_is_one_line(after_interrupted):
  result, _ = after_interrupted['damaged_metrics']
  assert_one_line(result, r'metrics.jsonl line 3 is not valid JSON')


def test_a_train_state_without_its_progress_is_one_line(after_interrupted):
  result, _ = after_interrupted['no_progress']
  assert_one_line(result, 'has no readable progress record')


# --- Checkpoints with bad metadata or weights -----------------------------------------------

@pytest.fixture(scope='module')
def finished_checkpoint(interrupted_run):
  return interrupted_run / records.CHECKPOINT


def rewrite_checkpoint(source, target, metadata=None, change=None):
  with open(source, 'rb') as f:
    blob = f.read()
  arrays = safetensors.numpy.load(blob)
  header_length = int.from_bytes(blob[:8], 'little')
  stored = json.loads(blob[8:8 + header_length])['__metadata__']
  if change:
    change(arrays)
  target.write_bytes(safetensors.numpy.save(arrays, metadata=metadata or stored))
  return stored


def with_config(stored, **values):
  record = json.loads(stored['lmf'])
  record['config'].update(values)
  return {'lmf': json.dumps(record)}


def bad_checkpoints(finished_checkpoint, directory):
  """{name: (path, the error it must give)}: the checkpoint rewritten with each defect."""
  stored = rewrite_checkpoint(finished_checkpoint, directory / 'same.safetensors')
  cases = {
      'not_json': ({'lmf': '{"config": '}, None, 'its metadata is not valid JSON'),
      'lr_text': (with_config(stored, lr='fast'), None,
                  r'invalid configuration: lr must be a number'),
      'rank_float': (with_config(stored, rank=2.5), None,
                     r'invalid configuration: rank must be a whole number'),
      'lr_inf': (with_config(stored, lr=float('inf')), None,
                 'invalid configuration: lr=inf must be a finite number'),
      'config_list': ({'lmf': json.dumps({'config': []})}, None,
                      'invalid configuration: saved configuration is a list'),
      'nan_weights': (None, lambda a: a['fusion_weights'].__setitem__((0, 0), np.nan),
                      'fusion_weights holds NaN or inf weights'),
  }
  paths = {}
  for name, (metadata, change, pattern) in cases.items():
    path = directory / f'{name}.safetensors'
    rewrite_checkpoint(finished_checkpoint, path, metadata, change)
    paths[name] = (path, pattern)
  return paths


def test_checkpoints_with_bad_metadata_or_weights_are_refused(finished_checkpoint, tmp_path):
  from engine import state_dict  # pylint: disable=import-outside-toplevel
  from engine.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  for path, pattern in bad_checkpoints(finished_checkpoint, tmp_path).values():
    with pytest.raises(CheckpointError, match=pattern):
      state_dict.load_checkpoint(str(path))
  state_dict.load_checkpoint(str(tmp_path / 'same.safetensors'))  # the rewrite alone is fine


@pytest.mark.parametrize('module', EVALUATES)
@pytest.mark.parametrize('case', BAD_FOR_EVALUATE)
def test_evaluate_refuses_a_bad_checkpoint_in_one_line(after_interrupted, finished_checkpoint,
                                                       tmp_path, module, case):
  result, _ = after_interrupted['evaluate_bad', module, case]
  _, pattern = bad_checkpoints(finished_checkpoint, tmp_path)[case]  # the error it must give
  assert_one_line(result, pattern)


def test_evaluate_says_when_the_data_path_came_from_the_checkpoint(after_interrupted):
  result, _ = after_interrupted['moved']
  elsewhere, _ = after_interrupted['moved_elsewhere']
  assert_one_line(result, 'the one stored in the checkpoint; pass --data_path')
  assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]


@pytest.mark.slow
def test_a_relative_data_path_is_stored_absolute(small_data_dir, tmp_path):
  data = tmp_path / 'data'
  copy_run(type(tmp_path)(small_data_dir), data)
  result = run_cli('lmf_jax.train', '--data_path=data', '--workdir=run', '--emotion=sad',
                   '--epochs=1', *SMALL_FLAGS, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  saved = files.read_json(tmp_path / 'run' / records.CONFIG_JSON)
  assert saved['config']['data_path'] == str(data)
  elsewhere = run_cli('lmf_jax.evaluate', f'--checkpoint={tmp_path / "run"}', cwd='/')
  assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]


# --- Flags ----------------------------------------------------------------------------------

@pytest.mark.parametrize('module, flag, pattern', BAD_FLAGS)
def test_bad_flags_are_one_line_before_anything_is_written(refusals, module, flag, pattern):
  result, directory = refusals['bad_flag', module, flag]
  assert_one_line(result, pattern)
  assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # no usage text
  assert not (directory / 'run').exists()


# --- Divergence -----------------------------------------------------------------------------

def test_a_run_that_diverges_later_ends_with_its_best_model_tested(small_data_dir, tmp_path):
  from engine import protocol  # pylint: disable=import-outside-toplevel
  from lmf_jax import train  # pylint: disable=import-outside-toplevel
  from run_helpers import small_config  # pylint: disable=import-outside-toplevel

  class DivergesAtEpoch4(train.JaxRun):
    """The real run, whose loss turns NaN at epoch 4 as a too-high learning rate's would."""

    def train_epoch(self, epoch, active):
      loss = super().train_epoch(epoch, active)
      return loss * float('nan') if epoch == 4 else loss

  config = small_config(small_data_dir, tmp_path / 'run', epochs=8, patience=8)
  with workdirs.claim_workdir(config, 'jax', {}, resume=False) as (config, status):
    dataset, is_synthetic, _ = datasets.open_dataset(config)
    record = protocol.train_and_evaluate(config, DivergesAtEpoch4(config, dataset), dataset,
                                         is_synthetic, status)
  assert record['stopped_by'] == 'diverged' and record['epochs_run'] == 3
  assert record['diverged'].startswith('training diverged at epoch 4 (train loss became nan)')
  assert f'lower --lr (now {config.lr:g})' in record['diverged']
  assert record['best_epoch'] <= 3 and 0 < record['f1'] <= 1
  assert files.read_json(tmp_path / 'run' / records.RESULTS_JSON) == record
  assert 'warning: training diverged at epoch 4' in records.summary_table(record)
  # Finished, not interrupted: training it again reports it instead of asking for --resume.
  assert train.train_and_evaluate(config) == record

"""What the trainer tests of both backends share: a small configuration and result fields."""

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time

from engine import records
from engine import state_dict
from flags.config import Config
from iemocap import files

# A model small enough to train in seconds on the small synthetic set, every part present.
SMALL = dict(audio_hidden=8, video_hidden=4, text_hidden=16, audio_dropout=0.2, video_dropout=0.1,
             text_dropout=0.1, factor_lr=0.003, lr=0.003, rank=4, batch_size=32,
             weight_decay=0.002)
# results.json fields that must not change between identical runs (timings do).
DETERMINISTIC_KEYS = ('f1', 'accuracy', 'test_loss', 'best_valid_loss', 'best_epoch',
                      'epochs_run', 'stopped_by', 'majority_f1', 'majority_accuracy')


def small_config(data_dir, workdir, **overrides):
  values = dict(emotion='sad', data_path=data_dir, workdir=str(workdir), epochs=4, patience=3,
                seed=1, **SMALL)
  values.update(overrides)
  return Config(**values)


def train_small(data_dir, workdir, backend, epochs=2):
  """A finished small run of `backend` ('jax' or 'torch'); returns its workdir."""
  config = small_config(data_dir, workdir, epochs=epochs)
  if backend == 'jax':
    from lmf_jax import train  # pylint: disable=import-outside-toplevel
    train.train_and_evaluate(config)
  else:
    from lmf_torch_npu import device, train  # pylint: disable=import-outside-toplevel
    train.train_and_evaluate(config, device.TorchOptions(device='cpu'))
  return str(workdir)


def run_cli(module, *args):
  """`python -m module args` in a fresh process, output captured."""
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                        check=False)


def assert_one_line(result, pattern, code=2):
  """The process exited with `code` and its last stderr line is the error, with no traceback."""
  assert result.returncode == code, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and re.search(pattern, last), last
  return last


def read_bytes(path):
  with open(path, 'rb') as f:
    return f.read()


def check_run_outputs(workdir, config, record, backend):
  """What every finished run's workdir holds, in either backend; returns config.json."""
  for name in (records.RESULTS_JSON, records.RESULTS_CSV, records.METRICS_JSONL,
               records.LOSS_CURVE, records.CONFIG_JSON, records.CHECKPOINT):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  saved = files.read_json(os.path.join(workdir, records.RESULTS_JSON))
  assert all(key in saved for key in records.RESULT_KEYS[saved['task']])
  assert saved['backend'] == backend
  history = records.read_metrics(workdir)
  assert [row['epoch'] for row in history] == list(range(1, record['epochs_run'] + 1))
  assert min(row['valid_loss'] for row in history) == record['best_valid_loss']
  config_json = files.read_json(os.path.join(workdir, records.CONFIG_JSON))
  assert config_json['backend'] == backend
  arrays, metadata = state_dict.load(os.path.join(workdir, records.CHECKPOINT))
  state_dict.check(arrays, config)
  assert metadata['backend'] == backend and metadata['epoch'] == record['best_epoch']
  return saved, history, config_json, metadata


def selected(request, test_name):
  """Whether this session runs the test function `test_name` (a fixture that starts its command
  in the background starts nothing for a deselected test)."""
  return any(getattr(item, 'originalname', item.name) == test_name
             for item in request.session.items)


@contextlib.contextmanager
def started_for(request, test_name, command, **options):
  """`command` started now in the background (a `Started`) if this session runs the test function
  `test_name`, else None; killed when the block ends. For a module fixture whose command a test
  reads later."""
  if not selected(request, test_name):
    yield None
    return
  process = Started(command, **options)
  try:
    yield process
  finally:
    process.kill()


class Started:
  """A command started in the background, its output going to files (not pipes, so it never waits
  for the test to read it); finish() waits for it, kill() ends it if it still runs."""

  def __init__(self, command, **options):
    self._out, self._err = tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')
    self.process = subprocess.Popen(command, stdout=self._out, stderr=self._err, text=True,
                                    **options)

  def finish(self, timeout=600):
    """The finished process as a CompletedProcess, its output as text."""
    self.process.wait(timeout=timeout)
    self._out.seek(0)
    self._err.seek(0)
    return subprocess.CompletedProcess(self.process.args, self.process.returncode,
                                       self._out.read(), self._err.read())

  def kill(self):
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()
    self._out.close()
    self._err.close()


def run_concurrently(*runs, timeout=600, at_once=None):
  """Independent commands started together, outputs captured: [CompletedProcess] in order.

  Each run is a command list, or (command, Popen keyword arguments such as env and cwd). A
  command line spends most of its time on one core (imports, XLA compilation), so two or three
  at once take little longer than one on a 2-core machine. With `at_once`, at most that many run
  at a time (the next starts when one ends), so a long list does not hold every process's
  memory at once.
  """
  commands = [run if isinstance(run, tuple) else (run, {}) for run in runs]
  limit = at_once or len(commands)
  started, results = [], [None] * len(commands)
  deadline = time.monotonic() + timeout
  try:
    while True:
      for i, process in enumerate(started):
        if results[i] is None and process.process.poll() is not None:
          results[i] = process.finish()
      running = sum(result is None for result in results[:len(started)])
      while len(started) < len(commands) and running < limit:
        command, options = commands[len(started)]
        started.append(Started(command, **options))
        running += 1
      if running == 0:
        return results
      assert time.monotonic() < deadline, f'timed out after {timeout} s'
      time.sleep(0.02)
  finally:
    for process in started:
      process.kill()

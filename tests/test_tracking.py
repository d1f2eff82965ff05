"""TensorBoard event files: what a run, a resumed run and a population write beside metrics.jsonl."""

import glob
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from engine import records
from engine import tracking
from iemocap import files
import run_helpers

event_pb2 = pytest.importorskip('tensorboardX.proto.event_pb2')

SMALL = [f'--{k}={v}' for k, v in run_helpers.SMALL.items()]


def read_scalars(logdir):
  """{tag: {step: value}} as TensorBoard shows them: event files in name (time) order, and a
  session START at step p (a resumed writer's purge_step) hides earlier events from p on."""
  scalars, plugins = {}, set()
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      length, = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      if event.HasField('session_log') and event.session_log.status == event.session_log.START:
        for steps in scalars.values():
          for step in [s for s in steps if s >= event.step]:
            del steps[step]
      for value in event.summary.value:
        if value.HasField('simple_value'):
          scalars.setdefault(value.tag, {})[event.step] = value.simple_value
        if value.metadata.plugin_data.plugin_name:
          plugins.add(value.metadata.plugin_data.plugin_name)
  return scalars, plugins


def command(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'lmf_jax.train', f'--data_path={data_dir}', f'--workdir={workdir}',
          '--emotion=sad', '--seed=1', *SMALL, *extra]


WHOLE = ('--epochs=12', '--patience=12')


@pytest.fixture(scope='module')
def finished(small_data_dir, tmp_path_factory):
  """Two finished commands, run at once: a 12-epoch run and a population of 3 seeds x 2 learning
  rates for 3 epochs. {'whole': workdir, 'seeds': workdir}"""
  root = tmp_path_factory.mktemp('tracking')
  runs = {'whole': WHOLE, 'seeds': ('--epochs=3', '--num_seeds=3', '--sweep=lr=0.003,0.01')}
  done = run_helpers.run_concurrently(*[command(small_data_dir, root / name, *args)
                                        for name, args in runs.items()])
  for result in done:
    assert result.returncode == 0, result.stderr[-2000:]
  return {name: root / name for name in runs}


@pytest.mark.slow
def test_a_run_writes_its_epochs_and_hyperparameters(finished):
  workdir = finished['whole']
  history = records.read_metrics(workdir)
  record = files.read_json(workdir / records.RESULTS_JSON)
  scalars, plugins = read_scalars(workdir)
  for tag, key in (('loss/train', 'train_loss'), ('loss/valid', 'valid_loss'),
                   ('loss/best_valid', 'best_valid_loss')):
    assert sorted(scalars[tag]) == [row['epoch'] for row in history]
    np.testing.assert_allclose([scalars[tag][row['epoch']] for row in history],
                               [row[key] for row in history], rtol=1e-6)  # float32 in events
  assert all(v == pytest.approx(run_helpers.SMALL['lr']) for v in scalars['lr'].values())
  assert scalars['result/f1'][0] == pytest.approx(record['f1'], rel=1e-6)
  assert 'hparams' in plugins


@pytest.mark.slow
def test_a_resumed_run_shows_each_epoch_once(small_data_dir, finished, tmp_path):
  whole, cut = finished['whole'], tmp_path / 'cut'
  process = subprocess.Popen(command(small_data_dir, cut, *WHOLE), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  while len(records.read_metrics(cut)) < 3 and process.poll() is None:
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  resumed = subprocess.run(command(small_data_dir, cut, *WHOLE, '--resume'), capture_output=True,
                           text=True, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert len(glob.glob(str(cut / 'events.out.tfevents.*'))) >= 2  # one per process
  got, _ = read_scalars(cut)
  want, _ = read_scalars(whole)
  assert sorted(got['loss/valid']) == list(range(1, 13))
  assert got['loss/valid'] == want['loss/valid']  # a resumed run is bitwise the whole one


@pytest.mark.slow
def test_a_population_writes_one_series_per_member_and_the_spread(finished):
  workdir = finished['seeds']
  scalars, plugins = read_scalars(workdir)
  history = records.read_metrics(workdir)
  for member in range(6):
    assert sorted(scalars[f'loss/valid/member{member}']) == [1, 2, 3]
    assert scalars[f'loss/valid/member{member}'][3] == pytest.approx(
        history[2]['valid_loss'][str(member)], rel=1e-6)
  last = [history[2]['valid_loss'][str(m)] for m in range(6)]
  assert scalars['loss/valid/mean'][3] == pytest.approx(np.mean(last), rel=1e-5)
  assert scalars['loss/valid/std'][3] == pytest.approx(np.std(last, ddof=1), rel=1e-4)
  assert scalars['lr/member0'][1] == pytest.approx(0.003)  # swept: one series per member
  assert scalars['factor_lr'][1] == pytest.approx(run_helpers.SMALL['factor_lr'])
  assert 'hparams' in plugins


def test_writers_opened_in_the_same_second_keep_their_own_files(tmp_path, monkeypatch):
  """tensorboardX names an event file by the second: a population's result, written just after
  its last epoch by a second writer, erased the epochs' file before names carried nanoseconds."""
  monkeypatch.setattr(time, 'time', lambda: 1764000000.25)  # both writers in one second
  first = tracking.open_tracker(str(tmp_path))
  first.epoch(1, {'loss/valid': 0.5})
  first.close()
  second = tracking.open_tracker(str(tmp_path))
  second.finish({'lr': 0.01}, {'f1': 0.75})
  second.close()
  assert len(glob.glob(str(tmp_path / 'events.out.tfevents.*'))) == 2
  scalars, plugins = read_scalars(tmp_path)
  assert scalars['loss/valid'] == {1: 0.5}
  assert scalars['result/f1'][0] == pytest.approx(0.75)
  assert 'hparams' in plugins

"""Many models in one vmapped program: members equal lone runs, selection is on validation."""

import dataclasses
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from engine import population as engine_population
from engine import records
from engine.errors import RunError
from flags.config import Config
from flags.errors import ConfigError
from iemocap import formats
from iemocap import files
from lmf_jax import checkpoint
from lmf_jax import population
from lmf_jax import train
import run_helpers


def small_config(data_dir, workdir, **overrides):
  return run_helpers.small_config(data_dir, workdir, **{'epochs': 6, 'patience': 2, 'seed': 10,
                                                         **overrides})


def load_params(path):
  variables, _, metadata = checkpoint.load(str(path))
  return variables, metadata


def assert_close_trees(a, b, atol, rtol=1e-5):
  """fp32 tolerance: vmap batches the matmuls, so rounding differs in the last bits."""
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol,
                               rtol=rtol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def seeds_run(small_data_dir, tmp_path_factory):
  # A high learning rate makes the models stop at different epochs on this small set.
  config = small_config(small_data_dir, tmp_path_factory.mktemp('seeds') / 'run', lr=0.02,
                        factor_lr=0.02, epochs=10)
  record = train.train_population(config, num_seeds=4, save_members=True)
  return config, record


@pytest.mark.slow
def test_each_member_equals_its_seed_trained_alone(seeds_run, tmp_path):
  config, record = seeds_run
  stopped_at = {m['epochs_run'] for m in record['members']}
  assert len(stopped_at) > 1  # members stop at different epochs: frozen ones must not drift
  for member in (record['members'][1], record['members'][3]):
    alone = train.train_and_evaluate(dataclasses.replace(
        config, seed=member['seed'], workdir=str(tmp_path / f'alone{member["seed"]}')))
    assert alone['best_epoch'] == member['best_epoch']
    assert alone['epochs_run'] == member['epochs_run']
    assert alone['best_valid_loss'] == pytest.approx(member['best_valid_loss'], rel=1e-5)
    assert alone['f1'] == pytest.approx(member['f1'], abs=0.02)
    lone, _ = load_params(tmp_path / f'alone{member["seed"]}' / records.CHECKPOINT)
    together, metadata = load_params(os.path.join(
        config.workdir, records.MEMBERS_DIR,
        f'member{member["member"]}-seed{member["seed"]}.safetensors'))
    assert metadata['epoch'] == member['best_epoch']
    assert_close_trees(together, lone, atol=1e-4)


@pytest.mark.slow
def test_results_summarise_members_and_choose_on_validation(seeds_run):
  config, record = seeds_run
  members = record['members']
  assert [m['seed'] for m in members] == [10, 11, 12, 13]
  chosen = min(members, key=lambda m: m['best_valid_loss'])
  assert record['chosen_member'] == chosen['member'] and record['f1'] == chosen['f1']
  assert record['f1_mean'] == pytest.approx(np.mean([m['f1'] for m in members]))
  assert record['f1_std'] == pytest.approx(np.std([m['f1'] for m in members], ddof=1))
  arrays, metadata = load_params(os.path.join(config.workdir, records.CHECKPOINT))
  assert metadata['member'] == record['chosen_member']
  assert metadata['config']['seed'] == chosen['seed']
  with open(os.path.join(config.workdir, records.RESULTS_CSV)) as f:
    rows = f.read().splitlines()
  assert len(rows) == 1 + len(members)
  assert rows[0].startswith('audio_hidden,video_hidden') and rows[0].endswith('chosen')
  assert sum(row.endswith('True') for row in rows[1:]) == 1
  assert os.path.getsize(os.path.join(config.workdir, records.LOSS_CURVE)) > 0


def member_records_for(members, valid_losses, f1s):
  return [{'member': i, 'seed': c.seed, **c.hparams(), 'best_valid_loss': valid, 'f1': f1,
           'accuracy': f1, 'test_loss': 0.5, 'best_epoch': 3, 'epochs_run': 5,
           'stopped_by': 'early_stopping'}
          for i, (c, valid, f1) in enumerate(zip(members, valid_losses, f1s))]


def summarise(config, members, member_records, dataset):
  return engine_population.summarise(config, members, member_records, dataset, True,
                                     backend='jax', device='cpu', throughput=1.0, wall_s=1.0)


def test_selection_ignores_test_scores(small_data_dir):
  """The model best on test is not the one chosen: only the valid loss decides."""
  dataset = formats.load(small_data_dir, 'sad')
  config = small_config(small_data_dir, '')
  members = engine_population.member_configs(config, 3, ())
  member_records = member_records_for(members, (0.50, 0.40, 0.45), (0.90, 0.70, 0.95))
  summary = summarise(config, members, member_records, dataset)
  assert summary['chosen_member'] == 1 and summary['f1'] == 0.70
  assert summary['seed'] == members[1].seed
  assert max(member_records, key=lambda r: r['f1'])['member'] == 2
  diverged = dict(member_records[1], best_valid_loss=None, f1=None, accuracy=None)
  summary = summarise(config, members, [member_records[0], diverged, member_records[2]], dataset)
  assert summary['chosen_member'] == 2 and summary['f1_mean'] == pytest.approx(0.925)


def test_a_sweep_chooses_the_setting_by_mean_valid_loss_and_reports_its_seeds(small_data_dir):
  dataset = formats.load(small_data_dir, 'sad')
  config = small_config(small_data_dir, '')
  members = engine_population.member_configs(config, 2, engine_population.parse_sweeps(['lr=0.001,0.003']))
  # lr=0.001 has the single best model (0.30) but the worse mean (0.45 vs 0.40).
  member_records = member_records_for(members, (0.30, 0.60, 0.41, 0.39), (0.6, 0.7, 0.8, 0.9))
  summary = summarise(config, members, member_records, dataset)
  assert summary['chosen_member'] == 3 and members[3].lr == 0.003
  assert summary['models_in_setting'] == 2 and summary['num_models'] == 4
  assert summary['f1_mean'] == pytest.approx(0.85)
  assert {s['lr']: s['models'] for s in summary['settings']} == {0.001: 2, 0.003: 2}


def test_throughput_leaves_out_the_epochs_that_compiled():
  # [seconds, models training, compiled] per epoch: two groups, or a pack, one after the other.
  timings = [[9.0, 4, True], [1.0, 4, False], [9.0, 2, True], [3.0, 2, False]]
  assert engine_population._throughput(timings, 100) == pytest.approx(100 * (4 + 2) / (1.0 + 3.0))


def test_a_stopped_model_does_not_change(small_data_dir):
  dataset = formats.load(small_data_dir, 'sad')
  configs = engine_population.member_configs(small_config(small_data_dir, ''), 2, ())
  ensemble = population.JaxPopulation(configs, dataset)
  before = jax.device_get(ensemble.state)
  ensemble.train_epoch(1, np.array([True, False]))
  after = jax.device_get(ensemble.state)
  moved = frozen = 0
  for old, new in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(old[1], new[1])
    frozen += 1
    moved += int(not np.array_equal(old[0], new[0]))
  assert moved > frozen // 2


@pytest.mark.slow
def test_swept_dropout_equals_a_lone_run_with_that_rate(small_data_dir, tmp_path):
  config = small_config(small_data_dir, tmp_path / 'sweep', epochs=3, patience=5)
  sweeps = engine_population.parse_sweeps(['text_dropout=0.1,0.4', 'lr=0.003,0.001'])
  record = train.train_population(config, num_seeds=1, sweeps=sweeps, save_members=True)
  assert [(m['text_dropout'], m['lr']) for m in record['members']] == [
      (0.1, 0.003), (0.1, 0.001), (0.4, 0.003), (0.4, 0.001)]
  alone = train.train_and_evaluate(dataclasses.replace(config, text_dropout=0.4, lr=0.001,
                                                       workdir=str(tmp_path / 'alone')))
  member = record['members'][3]
  assert alone['best_valid_loss'] == pytest.approx(member['best_valid_loss'], rel=1e-5)
  lone, _ = load_params(tmp_path / 'alone' / records.CHECKPOINT)
  together, _ = load_params(tmp_path / 'sweep' / records.MEMBERS_DIR /
                            f'member3-seed{member["seed"]}.safetensors')
  assert_close_trees(together, lone, atol=1e-4)


def test_sweeps_cross_with_seeds_and_group_by_shape():
  base = Config(emotion='sad', seed=5, **run_helpers.SMALL)
  sweeps = engine_population.parse_sweeps(['lr=0.0005,0.001,0.003', 'weight_decay=0,0.002',
                                   'rank=1,4'])
  members = engine_population.member_configs(base, 2, sweeps)
  assert len(members) == 3 * 2 * 2 * 2
  combos = {(m.lr, m.weight_decay, m.rank, m.seed) for m in members}
  assert len(combos) == len(members)
  assert {m.seed for m in members} == {5, 6}
  groups = engine_population.shape_groups(members)
  assert len(groups) == 2 and all(len(g) == 12 for g in groups)
  assert all(len({members[i].rank for i in g}) == 1 for g in groups)


@pytest.mark.parametrize('spec, message', [
    ('colour=1,2', "cannot sweep 'colour'"),
    ('lr=', 'give at least one value'),
    ('lr=fast', 'values must be numbers'),
    ('rank=1.5', 'rank takes whole numbers'),
])
def test_bad_sweeps_fail_clearly(spec, message):
  with pytest.raises(ConfigError, match=message):
    engine_population.parse_sweeps([spec])
  with pytest.raises(ConfigError, match='names lr twice'):
    engine_population.parse_sweeps(['lr=0.1', 'lr=0.2'])


def test_optimizer_state_carries_each_models_hyperparameters(small_data_dir):
  dataset = formats.load(small_data_dir, 'sad')
  base = small_config(small_data_dir, '')
  configs = [dataclasses.replace(base, lr=lr, factor_lr=f, weight_decay=w)
             for lr, f, w in ((0.1, 0.2, 0.0), (0.3, 0.4, 0.5))]
  ensemble = population.JaxPopulation(configs, dataset)
  inner = ensemble.state.opt_state.inner_states
  np.testing.assert_allclose(inner['base'].inner_state.hyperparams['learning_rate'], [0.1, 0.3])
  np.testing.assert_allclose(inner['factor'].inner_state.hyperparams['learning_rate'], [0.2, 0.4])
  np.testing.assert_allclose(inner['base'].inner_state.hyperparams['weight_decay'], [0.0, 0.5])


ALL_EMOTIONS = ['-m', 'lmf_jax.train', '--emotion=all', '--num_seeds=2', '--epochs=2',
                '--text_hidden=16', '--batch_size=32', '--rank=2', '--audio_hidden=4',
                '--video_hidden=4']


@pytest.fixture(scope='module', autouse=True)
def all_emotions(request, small_data_dir, tmp_path_factory):
  """`--emotion=all` from the command line, started when this module starts if its test is to
  run: it runs for a minute, mostly on one core, beside the in-process tests. Beside it, --resume
  of a root holding no run. (the command, its root, the started command, the started refusal)"""
  if not run_helpers.selected(request, 'test_all_emotions_table_from_the_command_line'):
    yield None  # deselected (the default run leaves out -m slow)
    return
  command = [sys.executable, *ALL_EMOTIONS, f'--data_path={small_data_dir}']
  directory = tmp_path_factory.mktemp('all_emotions')
  root = directory / 'all'
  started = [run_helpers.Started([*command, f'--workdir={root}'])]
  try:
    started.append(run_helpers.Started([*command, f'--workdir={directory / "none"}', '--resume']))
    yield command, root, *started
  finally:
    for process in started:
      process.kill()


@pytest.mark.slow
def test_all_emotions_table_from_the_command_line(all_emotions):
  command, root, first, refusal = all_emotions
  result = first.finish()
  assert result.returncode == 0, result.stderr
  table = result.stdout[result.stdout.index('emotion  models'):]
  for emotion in ('happy', 'sad', 'angry', 'neutral'):
    assert f'\n{emotion} ' in table
    assert (root / emotion / records.RESULTS_JSON).exists()
  assert 'paper' in table and '85.90' in table and '89.00' in table
  assert 'synthetic data' in table
  # --resume: finished emotions are reported again; a root holding no run is refused.
  (root / 'angry' / records.RESULTS_JSON).unlink()  # as if killed before its last write
  again = subprocess.run([*command, f'--workdir={root}', '--resume'], capture_output=True,
                         text=True, check=False)
  assert again.returncode == 0, again.stderr
  assert again.stdout[again.stdout.index('emotion  models'):] == table
  empty = refusal.finish()
  assert empty.returncode == 2
  assert empty.stderr.strip().endswith('no workdir of this command holds a run to continue')


@pytest.mark.slow
def test_a_population_of_one_trains_what_the_single_run_trains(small_data_dir):
  """With one model, the vmapped program computes what JaxRun computes (one epoch)."""
  dataset = formats.load(small_data_dir, 'sad')
  config = small_config(small_data_dir, '')
  ensemble = population.JaxPopulation([config], dataset)
  run = train.JaxRun(config, dataset)
  loss = ensemble.train_epoch(1, np.ones(1, bool))
  assert loss[0] == pytest.approx(run.train_epoch(1, np.ones(1, bool))[0], rel=1e-6)
  assert_close_trees(jax.tree_util.tree_map(lambda x: x[0], ensemble.state.params),
                     run.state.params, atol=1e-4)  # Adam amplifies rounding where grads ~ 0


class Interrupt(Exception):
  pass


def stop_at_call(count):
  """An on_epoch_end hook that interrupts the run at its `count`-th saved epoch."""
  calls = []

  def hook(epoch):
    calls.append(epoch)
    if len(calls) == count:
      raise Interrupt()
  return hook


MEMBER_KEYS = ('seed', 'best_epoch', 'best_valid_loss', 'epochs_run', 'stopped_by', 'f1',
               'accuracy', 'test_loss')


@pytest.fixture(scope='module')
def two_groups(small_data_dir, tmp_path_factory):
  """A population of two shapes (rank 2 and 4) x 3 seeds whose members stop at different epochs,
  so packing happens, trained without interruption."""
  config = small_config(small_data_dir, tmp_path_factory.mktemp('groups') / 'whole', lr=0.02,
                        factor_lr=0.02, epochs=10)
  sweeps = engine_population.parse_sweeps(['rank=2,4'])
  return config, sweeps, train.train_population(config, num_seeds=3, sweeps=sweeps)


@pytest.mark.slow
@pytest.mark.parametrize('group', [0, 1])
def test_an_interrupted_population_resumes_to_the_same_result(two_groups, tmp_path, group):
  config, sweeps, whole = two_groups
  cut = dataclasses.replace(config, workdir=str(tmp_path / 'cut'))
  # The first group's members are the first three; its epochs end with its last one to stop.
  cut_at = 2 if group == 0 else max(m['epochs_run'] for m in whole['members'][:3]) + 2
  with pytest.raises(Interrupt):
    train.train_population(cut, num_seeds=3, sweeps=sweeps, on_epoch_end=stop_at_call(cut_at))
  assert not (tmp_path / 'cut' / records.RESULTS_JSON).exists()
  with pytest.raises(RunError, match='holds an interrupted run: pass --resume'):
    train.train_population(cut, num_seeds=3, sweeps=sweeps)
  resumed = train.train_population(cut, num_seeds=3, sweeps=sweeps, resume=True)
  for a, b in zip(whole['members'], resumed['members']):
    assert {k: a[k] for k in MEMBER_KEYS} == {k: b[k] for k in MEMBER_KEYS}
  assert resumed['chosen_member'] == whole['chosen_member']
  assert run_helpers.read_bytes(tmp_path / 'cut' / records.CHECKPOINT) == run_helpers.read_bytes(
      os.path.join(config.workdir, records.CHECKPOINT))
  assert records.read_metrics(str(tmp_path / 'cut')) == records.read_metrics(config.workdir)


@pytest.mark.slow
def test_packing_keeps_the_live_models_and_their_results(two_groups, small_data_dir):
  """Members stopped at different epochs (so the population was packed) and each one is what a
  population that never packs gives, to float32 rounding."""
  config, _, whole = two_groups
  assert len({m['epochs_run'] for m in whole['members'][:3]}) > 1
  dataset = formats.load(small_data_dir, 'sad')
  members = engine_population.member_configs(dataclasses.replace(config, rank=2), 3)
  packed = population.JaxPopulation(members, dataset)
  unpacked = population.JaxPopulation(members, dataset)
  for epoch in (1, 2):
    packed.train_epoch(epoch, np.ones(3, bool))
    unpacked.train_epoch(epoch, np.ones(3, bool))
  packed.pack(np.array([True, False, True]))
  assert [c.seed for c in packed.configs] == [members[0].seed, members[2].seed]
  assert_close_trees(jax.tree_util.tree_map(lambda x: x[np.array([0, 2])], unpacked.state),
                     packed.state, atol=0, rtol=0)  # packing itself moves nothing
  packed.train_epoch(3, np.ones(2, bool))
  unpacked.train_epoch(3, np.array([True, False, True]))
  assert_close_trees(jax.tree_util.tree_map(lambda x: x[np.array([0, 2])], unpacked.state.params),
                     packed.state.params, atol=1e-5)


def test_should_pack_when_at_most_half_still_train():
  assert engine_population.should_pack(2, 4) and engine_population.should_pack(1, 2)
  assert not engine_population.should_pack(3, 4) and not engine_population.should_pack(0, 4)
  assert not engine_population.should_pack(1, 1)


@pytest.fixture(scope='module')
def whole_run(small_data_dir, tmp_path_factory):
  """A 2-seed population trained uninterrupted from the command line, and beside it, at the same
  time, the same command killed (kill -9, no clean-up runs) after its first saved epoch:
  (the command, the whole run's workdir, the killed run's workdir)."""
  args = [sys.executable, '-m', 'lmf_jax.train', f'--data_path={small_data_dir}', '--emotion=sad',
          '--num_seeds=2', '--epochs=40', '--patience=40', '--text_hidden=16', '--batch_size=32',
          '--rank=2', '--audio_hidden=4', '--video_hidden=4']
  root = tmp_path_factory.mktemp('whole')
  workdir, cut = root / 'run', root / 'cut'
  whole = run_helpers.Started([*args, f'--workdir={workdir}'])
  try:
    process = subprocess.Popen([*args, f'--workdir={cut}'], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (cut / records.TRAIN_STATE).exists() and time.monotonic() < deadline:
      time.sleep(0.02)
    process.kill()  # kill -9: no clean-up runs
    process.wait()
    result = whole.finish()
  finally:
    whole.kill()
  assert result.returncode == 0, result.stderr[-2000:]
  return args, workdir, cut


@pytest.mark.slow
def test_a_killed_population_resumes_bitwise_from_the_command_line(whole_run):
  args, whole, cut = whole_run
  assert not (cut / records.RESULTS_JSON).exists()
  resumed = subprocess.run([*args, f'--workdir={cut}', '--resume'],
                           capture_output=True, text=True, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  a = files.read_json(whole / records.RESULTS_JSON)
  b = files.read_json(cut / records.RESULTS_JSON)
  assert [{k: m[k] for k in MEMBER_KEYS} for m in a['members']] == [
      {k: m[k] for k in MEMBER_KEYS} for m in b['members']]
  assert run_helpers.read_bytes(cut / records.CHECKPOINT) == run_helpers.read_bytes(
      whole / records.CHECKPOINT)


@pytest.mark.slow
@pytest.mark.ray
def test_packs_on_ray_end_as_the_population_in_process(whole_run, tmp_path):
  pytest.importorskip('ray')
  args, whole, _ = whole_run
  packs = subprocess.run([*args, f'--workdir={tmp_path / "packs"}', '--ray_address=local',
                          '--models_per_pack=1'], capture_output=True, text=True, check=False,
                         env={**os.environ, 'RAY_USAGE_STATS_ENABLED': '0'})
  assert packs.returncode == 0, packs.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / 'packs' / records.TRIALS_DIR)) == ['0-seed0', '1-seed1']
  a = files.read_json(whole / records.RESULTS_JSON)
  b = files.read_json(tmp_path / 'packs' / records.RESULTS_JSON)
  assert 'on Ray, up to 2 at once' in b['device']
  for x, y in zip(a['members'], b['members']):
    assert {k: x[k] for k in ('member', 'seed', 'best_epoch', 'epochs_run', 'stopped_by')} == \
        {k: y[k] for k in ('member', 'seed', 'best_epoch', 'epochs_run', 'stopped_by')}
    assert x['best_valid_loss'] == pytest.approx(y['best_valid_loss'], rel=1e-5)
  assert a['chosen_member'] == b['chosen_member']
  here, _ = load_params(whole / records.CHECKPOINT)
  packed, _ = load_params(tmp_path / 'packs' / records.CHECKPOINT)
  assert_close_trees(packed, here, atol=1e-5)

"""Shared flags: presets, precedence, the seed's aliases and CSV, validation, the saved config."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from flags import definitions
from flags import presets
from flags.config import Config
from flags.errors import ConfigError

SEED_CSV = """0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
8,4,128,0.3,0,0,0.0005,0.003,4,256,0.002
4,16,128,0.3,0.1,0.5,0.003,0.001,1,256,0.002
32,8,64,0.2,0.5,0.2,0.003,0.0005,16,256,0.002
"""


_VALUES = flags.FlagValues()
definitions.define_training_flags(_VALUES)


def resolve(*argv):
  values = _VALUES
  values.unparse_flags()
  values(['prog', *argv])
  try:
    return definitions.config_from_flags(values)
  finally:
    values.unparse_flags()


def test_presets_are_the_seed_table():
  assert presets.PRESETS['sad'] == dict(
      audio_hidden=8, video_hidden=4, text_hidden=128, audio_dropout=0.0, video_dropout=0.0,
      text_dropout=0.0, factor_lr=0.0005, lr=0.003, rank=4, batch_size=256, weight_decay=0.002)
  assert presets.PRESETS['angry']['batch_size'] == 64
  assert presets.PRESETS['angry']['rank'] == 8
  assert presets.PRESETS['happy']['rank'] == 1
  assert presets.PRESETS['neutral']['rank'] == 16
  assert presets.PRESETS['neutral']['audio_hidden'] == 32


def test_defaults_are_the_seeds_and_the_emotions_preset():
  config = resolve()
  assert config.emotion == 'neutral' and config.epochs == 500 and config.patience == 20
  assert config.output_dim == 2
  assert config.hparams() == presets.PRESETS['neutral']
  assert resolve('--emotion=angry').hparams() == presets.PRESETS['angry']


def test_explicit_flag_beats_csv_beats_preset(tmp_path):
  csv_path = tmp_path / 'param_data.csv'
  csv_path.write_text(SEED_CSV)
  config = resolve('--emotion=sad', f'--para_path={csv_path}')
  assert config.audio_dropout == 0.3  # the Ascend CSV's sad row differs from the table
  assert config.text_hidden == 128
  config = resolve('--emotion=sad', f'--para_path={csv_path}', '--audio_dropout=0.1',
                   '--rank=2')
  assert config.audio_dropout == 0.1 and config.rank == 2 and config.lr == 0.003


def test_seed_spellings_and_aliases():
  config = resolve("--emotion=b'happy'", '--data_url=/data/iemocap', '--train_url=/out')
  assert config.emotion == 'happy'
  assert config.data_path == '/data/iemocap' and config.workdir == '/out'
  assert resolve('--emotion="b\'angry\'"').emotion == 'angry'


@pytest.mark.parametrize('argv, message', [
    (['--emotion=joy'], "unknown emotion 'joy'"),
    (['--audio_hidden=-1'], 'audio_hidden=-1 must be >= 1'),
    (['--text_dropout=1.0'], r'text_dropout=1.0 must be in \[0, 1\)'),
    (['--video_dropout=-0.1'], r'video_dropout=-0.1 must be in \[0, 1\)'),
    (['--batch_size=1'], 'batch_size=1 must be >= 2'),
    (['--lr=0'], 'lr=0.0 must be > 0'),
    (['--rank=0'], 'rank=0 must be >= 1'),
    (['--epochs=0'], 'epochs=0 must be >= 1'),
    (['--perf_steps=-1'], 'perf_steps=-1 must be >= 0'),
])
def test_bad_values_fail_with_one_line(argv, message):
  with pytest.raises(ConfigError, match=message) as error:
    resolve(*argv)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('text, message', [
    ('1,2,3\n', 'has 1 rows: expected 4'),
    (SEED_CSV.replace('8,4,128,0.3,0,0,', '8,4,128,0.3,0,'), r'line 2 \(sad\) has 10 values'),
    (SEED_CSV.replace('8,4,128', '8,x,128'), r"line 2 \(sad\): video_hidden is 'x', not a number"),
    (SEED_CSV.replace('8,4,128', '8,4.5,128'), 'video_hidden is .4.5., not a whole number'),
])
def test_csv_reader_errors(tmp_path, text, message):
  path = tmp_path / 'param_data.csv'
  path.write_text(text)
  with pytest.raises(ConfigError, match=message):
    presets.read_param_csv(str(path))


def test_csv_reader_reads_rows_in_seed_order(tmp_path):
  path = tmp_path / 'param_data.csv'
  path.write_text(SEED_CSV)
  table = presets.read_param_csv(str(path))
  assert list(table) == ['angry', 'sad', 'happy', 'neutral']
  assert table['neutral'] == presets.PRESETS['neutral']
  assert isinstance(table['sad']['batch_size'], int)
  with pytest.raises(ConfigError, match='cannot read --para_path'):
    presets.read_param_csv(str(tmp_path / 'absent.csv'))


def test_config_is_frozen_serialisable_and_fingerprinted():
  config = resolve('--emotion=sad', '--seed=3')
  with pytest.raises(AttributeError):
    config.lr = 1.0
  again = Config.from_dict(json.loads(json.dumps(config.to_dict())))
  assert again == config and again.fingerprint() == config.fingerprint()
  other = Config.from_dict({**config.to_dict(), 'workdir': '/elsewhere'})
  assert other.fingerprint() == config.fingerprint()
  changed = Config.from_dict({**config.to_dict(), 'lr': 0.01})
  assert changed.fingerprint() != config.fingerprint()
  with pytest.raises(ConfigError, match='unknown fields'):
    Config.from_dict({**config.to_dict(), 'colour': 'red'})
  assert 'sad' in str(config)


def test_command_line_prints_one_error_line_and_exits_2(tmp_path):
  code = ('import sys; from absl import app; from flags import definitions\n'
          'from engine import cli; definitions.define_training_flags()\n'
          'app.run(cli.user_errors_exit(lambda argv: print(definitions.config_from_flags())))')
  result = subprocess.run([sys.executable, '-c', code, '--emotion=joy'], capture_output=True,
                          text=True, check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: unknown emotion 'joy': choose one of happy, sad, "
                                   'angry, neutral (IEMOCAP), or sentiment or traits (regression '
                                   'sets)')


FREED_64MB_RESIDENT = """
import os, sys
import numpy as np
from engine import cli
if sys.argv[1] == 'reuse' and not cli.reuse_freed_memory():
  sys.exit('mallopt refused')
def resident():
  return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
before = resident()
block = np.ones(64 * 2**20 // 8)
del block
print((resident() - before) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc and /proc/self/statm')
def test_reuse_freed_memory_keeps_a_freed_large_block_in_the_process():
  """The default gives a 64 MB block back at once (so the next call faults in fresh pages);
  after reuse_freed_memory the freed block stays, ready for the next call's buffers."""
  env = {k: v for k, v in os.environ.items()  # glibc's own malloc, with its defaults
         if k not in ('LD_PRELOAD', 'GLIBC_TUNABLES') and not k.startswith('MALLOC_')}
  kept = {mode: float(subprocess.run([sys.executable, '-c', FREED_64MB_RESIDENT, mode], env=env,
                                     check=True, capture_output=True, text=True).stdout)
          for mode in ('default', 'reuse')}
  assert kept['default'] < 16
  assert kept['reuse'] > 48


def test_importing_the_libraries_defines_no_flag_of_ours():
  code = ('from absl import flags as absl_flags\n'
          'before = set(absl_flags.FLAGS)\n'
          'import lmf_jax.train, lmf_jax.evaluate, lmf_jax.population, lmf_torch_npu.train\n'
          'import lmf_torch_npu.evaluate, parity.checks, parity.bench, engine.protocol\n'
          'import flags.definitions, flags.evaluation, lmf_jax.options, lmf_torch_npu.options\n'
          'import engine.cli, engine.evaluation, engine.workdirs\n'
          'new = set(absl_flags.FLAGS) - before\n'
          'print(sorted(n for n in new\n'
          '             if not absl_flags.FLAGS.find_module_defining_flag(n).startswith("absl")))\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'

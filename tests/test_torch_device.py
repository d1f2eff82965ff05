"""Device and precision selection of lmf_torch_npu, on a CPU-only machine.

Where a test needs torch_npu or apex to be installed, a FAKE module stands in
(written to a temporary directory and found by the ordinary import system):
it exercises the selection logic only, never a real NPU, and nothing trains on it.
"""

import copy
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from engine import records
from flags import presets
from flags.config import Config
from flags.errors import ConfigError
from iemocap import files
from lmf_torch_npu import device
from lmf_torch_npu import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Caps oneDNN at AVX2 as on a CPU without AVX-512, where it has no bf16 LSTM.
NO_AVX512 = {'ONEDNN_MAX_CPU_ISA': 'AVX2'}
FALLBACK_LOG = ("the LSTM runs in float32 (the rest in bf16) because this CPU's oneDNN has no "
                'bf16 LSTM')

CPU_ONLY = not torch.cuda.is_available()


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
  """fake(name, source) puts a FAKE module `name` (a .py file) first on the import path; every
  module imported from there is forgotten after the test, so no later test sees a fake."""
  path = tmp_path / 'fakes'
  path.mkdir()
  monkeypatch.syspath_prepend(str(path))
  roots = set()

  def fake(name, source):
    parts = name.split('.')
    roots.add(parts[0])
    for i in range(1, len(parts)):
      package = path.joinpath(*parts[:i])
      package.mkdir(exist_ok=True)
      (package / '__init__.py').touch()
    path.joinpath(*parts[:-1], parts[-1] + '.py').write_text(textwrap.dedent(source))
    for module in [m for m in sys.modules if m.split('.')[0] == parts[0]]:
      monkeypatch.delitem(sys.modules, module)  # restored (the real one, if any) afterwards

  yield fake
  for module in [m for m in sys.modules if m.split('.')[0] in roots]:
    if getattr(sys.modules[module], '__file__', '') and str(path) in sys.modules[module].__file__:
      del sys.modules[module]


FAKE_TORCH_NPU = '''
# FAKE torch_npu for the selection tests: it reports {count} NPU(s) and records set_device.
import types
calls = []
npu = types.SimpleNamespace(
    is_available=lambda: {count} > 0, device_count=lambda: {count},
    set_device=calls.append, get_device_name=lambda index: 'Ascend910B (fake)')
'''


def test_auto_without_torch_npu_or_cuda_is_the_cpu():
  if 'torch_npu' in sys.modules or not CPU_ONLY:
    pytest.skip('this machine has torch_npu or CUDA')
  choice = device.select_device('auto', environ={})
  assert (choice.kind, choice.index, choice.name) == ('cpu', None, 'cpu')
  assert 'torch_npu is not installed' in choice.why
  assert device.select_device('cpu').why == 'asked for'


@pytest.mark.skipif(not CPU_ONLY, reason='CUDA is available here')
def test_asking_for_a_missing_device_says_what_is_missing():
  with pytest.raises(device.DeviceError, match=r'^--device=npu: torch_npu is not installed$'):
    device.select_device('npu', environ={})
  with pytest.raises(device.DeviceError, match='^--device=cuda: this torch build has no CUDA'):
    device.select_device('cuda')
  for bad in ('tpu', 'npu:x', 'cpu:0', 'npu:'):
    with pytest.raises(ConfigError, match='expected auto, npu, cuda, cpu, npu:<id> or cuda:<id>'):
      device.select_device(bad)


def test_torch_npu_without_cann_libraries_is_one_line(fake_module):
  fake_module('torch_npu', '''
      # FAKE torch_npu that fails to import the way it does without CANN.
      raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')
      ''')
  with pytest.raises(device.DeviceError) as error:
    device.select_device('npu', environ={})
  message = str(error.value)
  assert message.startswith('--device=npu: torch_npu is installed but the CANN libraries were '
                            'not found (libhccl.so: cannot open shared object file')
  assert 'set_env.sh' in message and '\n' not in message
  if CPU_ONLY:
    assert device.select_device('auto', environ={}).kind == 'cpu'


def test_npu_choice_follows_ascend_device_id_and_explicit_ids(fake_module):
  fake_module('torch_npu', FAKE_TORCH_NPU.format(count=4))
  assert device.select_device('auto', environ={}).name == 'npu:0'
  choice = device.select_device('auto', environ={'ASCEND_DEVICE_ID': '2'})
  assert choice.name == 'npu:2' and 'ASCEND_DEVICE_ID=2' in choice.why
  assert device.select_device('npu:3', environ={'ASCEND_DEVICE_ID': '2'}).name == 'npu:3'
  with pytest.raises(device.DeviceError, match=r'npu:4 does not exist: 4 NPU\(s\) visible'):
    device.select_device('npu:4', environ={})
  with pytest.raises(device.DeviceError, match="ASCEND_DEVICE_ID='x' is not a device number"):
    device.select_device('npu', environ={'ASCEND_DEVICE_ID': 'x'})
  device.activate(device.select_device('npu', environ={'ASCEND_DEVICE_ID': '1'}))
  assert sys.modules['torch_npu'].calls == ['npu:1']
  assert device.describe(device.DeviceChoice('npu', 1, '')) == 'npu:1 (Ascend910B (fake))'


def test_torch_npu_that_sees_no_npu_falls_back(fake_module):
  fake_module('torch_npu', FAKE_TORCH_NPU.format(count=0))
  with pytest.raises(device.DeviceError, match='torch_npu imported but sees no NPU'):
    device.select_device('npu', environ={})
  if CPU_ONLY:
    assert device.select_device('auto', environ={}).kind == 'cpu'


NPU = device.DeviceChoice('npu', 0, 'test')
CUDA = device.DeviceChoice('cuda', 0, 'test')
CPU = device.DeviceChoice('cpu', None, 'test')


def test_precision_defaults_per_device(monkeypatch):
  monkeypatch.setattr(device, 'cpu_bf16_lstm_works', lambda: True)  # the fallback: tests below
  assert device.select_precision(NPU) == device.Precision('O2', 'native', torch.float16, '128')
  assert device.select_precision(CUDA).amp == 'off'
  assert device.select_precision(CPU) == device.Precision('off', 'none', None, 'none')
  assert device.select_precision(CUDA, 'O1') == device.Precision('O1', 'native', torch.float16,
                                                                 'dynamic')
  assert device.select_precision(CPU, 'O2') == device.Precision('O2', 'native', torch.bfloat16,
                                                                'none')
  assert device.select_precision(NPU, 'O1', '1024').loss_scale == '1024'
  assert device.select_precision(NPU, 'O1', 'dynamic').loss_scale == 'dynamic'
  assert str(device.select_precision(CPU)) == 'float32'
  assert str(device.select_precision(CPU, 'O1')) == 'amp O1 (native, bfloat16, loss scale none)'


def test_bad_precision_requests_are_one_line():
  with pytest.raises(ConfigError, match='--loss_scale=128 needs mixed precision'):
    device.select_precision(CPU, 'off', '128')
  for bad in ('0', '-4', 'abc', 'inf'):
    with pytest.raises(ConfigError, match=f"--loss_scale='{bad}': expected dynamic"):
      device.select_precision(NPU, 'O2', bad)


def test_apex_absent_means_native_amp(caplog):
  if device.import_ascend_apex()[0] is not None:
    pytest.skip('Ascend apex is installed here')
  precision = device.select_precision(NPU, 'O2', amp_backend='apex')
  assert precision.backend == 'native'
  assert "apex (Ascend's build) is not installed; using native torch AMP" in caplog.text


def test_an_apex_that_is_not_ascends_is_not_used(fake_module):
  fake_module('apex.amp', '''
      # FAKE apex.amp without Ascend's combine_grad (NVIDIA's signature).
      def initialize(models, optimizers=None, opt_level='O1', loss_scale=None):
        raise AssertionError('must not be called')
      ''')
  assert 'not Ascend' in device.import_ascend_apex()[1]
  assert device.select_precision(NPU, 'O2', amp_backend='apex').backend == 'native'


def test_ascend_apex_is_used_on_npu_only(fake_module):
  fake_module('apex.amp', '''
      # FAKE Ascend apex.amp: only its signature matters to the selection.
      def initialize(models, optimizers=None, opt_level='O1', loss_scale=None, combine_grad=None):
        return models, optimizers
      ''')
  assert device.select_precision(NPU, 'O2', amp_backend='apex').backend == 'apex'
  assert device.select_precision(CPU, 'O2', amp_backend='apex').backend == 'native'


def test_no_fake_module_outlives_its_test():
  assert 'torch_npu' not in sys.modules or 'fake' not in repr(sys.modules['torch_npu'])
  assert device.select_device('auto', environ={}).kind in ('cpu', 'cuda', 'npu')


@pytest.mark.amp
def test_bf16_autocast_on_cpu_keeps_batchnorm_and_the_loss_in_float32():
  model = model_lib.from_config(Config(emotion='sad', **{**presets.PRESETS['sad'],
                                                        'text_hidden': 16}))
  precision = device.select_precision(CPU, 'O1')
  _, _, mixed = device.prepare(CPU, precision, model, None)
  assert mixed.scaler is None  # bf16 has float32's range: nothing to scale
  seen = {}
  for name in ('audio_subnet.norm', 'audio_subnet.linear_1', 'text_subnet.linear_1'):
    model.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: seen.__setitem__(name, out.dtype))
  with mixed.autocast():
    logits = model(torch.randn(4, 74), torch.randn(4, 35), torch.randn(4, 20, 300))
  assert seen == {'audio_subnet.norm': torch.float32, 'audio_subnet.linear_1': torch.bfloat16,
                  'text_subnet.linear_1': torch.bfloat16}
  # Low-precision features (as apex O2 hands them on) still meet a float32 BatchNorm.
  seen.clear()
  with mixed.autocast():
    model(torch.randn(4, 74).bfloat16(), torch.randn(4, 35).bfloat16(), torch.randn(4, 20, 300))
  assert seen['audio_subnet.norm'] == torch.float32
  from lmf_torch_npu import steps  # pylint: disable=import-outside-toplevel
  assert steps.loss_sum(logits, torch.tensor([0, 1, 1, 0])).dtype == torch.float32


@pytest.mark.amp
def test_a_numeric_loss_scale_is_static_and_dynamic_is_torchs_default():
  model = model_lib.from_config(Config(emotion='sad', **presets.PRESETS['sad']))
  static = device.prepare(CPU, device.select_precision(CPU, 'O1', '128'), model, None)[2].scaler
  assert static.get_scale() == 128.0 and static.get_growth_interval() == device.NEVER
  dynamic = device.prepare(CPU, device.select_precision(CPU, 'O1', 'dynamic'), model, None)[2]
  assert dynamic.scaler.get_scale() == 2.0**16 and dynamic.scaler.get_growth_interval() == 2000


@pytest.fixture
def fresh_probe():
  """The bf16 LSTM probe forgets its answer before and after the test."""
  device.cpu_bf16_lstm_works.cache_clear()
  yield
  device.cpu_bf16_lstm_works.cache_clear()


class NoBf16Lstm(torch.nn.LSTM):
  """An LSTM that fails under bf16 autocast as oneDNN does without AVX-512, and counts itself."""
  built = 0

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    NoBf16Lstm.built += 1

  def forward(self, *args, **kwargs):  # pylint: disable=arguments-differ
    if torch.is_autocast_enabled('cpu'):
      raise RuntimeError('could not create a primitive descriptor for the LSTM forward '
                         'propagation primitive. Run workload with ONEDNN_VERBOSE=all')
    return super().forward(*args, **kwargs)


def small_sad_model():
  torch.manual_seed(0)
  return model_lib.from_config(Config(emotion='sad', **{**presets.PRESETS['sad'],
                                                       'text_hidden': 16}))


def small_inputs(batch=8):
  g = torch.Generator().manual_seed(1)
  return (torch.randn(batch, 74, generator=g), torch.randn(batch, 35, generator=g),
          torch.randn(batch, 20, 300, generator=g))


@pytest.mark.amp
def test_the_bf16_lstm_probe_runs_once_only_for_cpu_bf16_and_logs_once(fresh_probe, monkeypatch,
                                                                         caplog):
  model = small_sad_model()
  monkeypatch.setattr(torch.nn, 'LSTM', NoBf16Lstm)
  monkeypatch.setattr(NoBf16Lstm, 'built', 0)
  caplog.set_level('INFO', logger='absl')  # parity's in-process checks lower absl's level
  assert device.select_precision(CPU) == device.Precision('off', 'none', None, 'none')
  assert device.select_precision(CUDA, 'O1').float32_lstm is False
  model(*small_inputs())
  assert NoBf16Lstm.built == 0  # float32 and fp16 never probe
  precision = device.select_precision(CPU, 'O1')
  device.select_precision(CPU, 'O2')
  mixed = device.MixedPrecision(CPU, precision)
  for _ in range(2):
    with mixed.autocast():
      model(*small_inputs())
  assert NoBf16Lstm.built == 1
  assert caplog.text.count(FALLBACK_LOG) == 1
  assert precision.float32_lstm and str(precision).endswith('loss scale none, LSTM in float32)')
  # The same request fingerprints the same workdir on every CPU.
  assert precision.options() == {'amp': 'O1', 'amp_backend': 'native', 'amp_dtype': 'bfloat16',
                                 'loss_scale': 'none'}


def test_the_probe_leaves_the_callers_rng_alone(fresh_probe):
  torch.manual_seed(3)
  expected = torch.rand(4)
  torch.manual_seed(3)
  with torch.no_grad():  # it still probes the backward pass
    device.cpu_bf16_lstm_works()
  assert torch.equal(torch.rand(4), expected)


@pytest.mark.amp
def test_without_a_bf16_lstm_it_runs_in_float32_and_gradients_flow(monkeypatch):
  monkeypatch.setattr(device, 'cpu_bf16_lstm_works', lambda: False)
  model = small_sad_model()
  reference = copy.deepcopy(model)
  seen = {}
  model.text_subnet.rnn.register_forward_hook(
      lambda module, args, out: seen.__setitem__('h_n', out[1][0]))
  model.text_subnet.linear_1.register_forward_hook(
      lambda module, args, out: seen.__setitem__('text', out.dtype))
  mixed = device.MixedPrecision(CPU, device.select_precision(CPU, 'O1'))
  labels = torch.tensor([0, 1] * 4)
  from lmf_torch_npu import steps  # pylint: disable=import-outside-toplevel
  with mixed.autocast():
    logits = model(*small_inputs())
  steps.loss_sum(logits, labels).backward()
  steps.loss_sum(reference(*small_inputs()), labels).backward()
  assert seen['h_n'].dtype == torch.float32 and seen['text'] == torch.bfloat16
  # The LSTM itself is exactly the float32 one; autocast resumes after it.
  _, (h_n, _) = reference.text_subnet.rnn(small_inputs()[2])
  assert torch.equal(seen['h_n'], h_n)
  for (name, p), q in zip(model.named_parameters(), reference.parameters()):
    assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    scale = q.grad.abs().max()
    assert (p.grad - q.grad).abs().max() <= 0.1 * scale, name  # bf16 rounding elsewhere


@pytest.mark.amp
@pytest.mark.skipif(platform.machine().lower() not in ('x86_64', 'amd64'),
                    reason='ONEDNN_MAX_CPU_ISA=AVX2 caps x86 CPUs only')
def test_bf16_training_runs_on_a_cpu_without_avx512(small_data_dir, tmp_path):
  workdir = tmp_path / 'avx2'
  result = subprocess.run(
      [sys.executable, '-m', 'lmf_torch_npu.train', f'--data_path={small_data_dir}',
       f'--workdir={workdir}', '--emotion=sad', '--epochs=1', '--text_hidden=16',
       '--batch_size=32', '--amp=O1'],
      capture_output=True, text=True, check=False, cwd=ROOT,
      env={**os.environ, **NO_AVX512, 'OMP_NUM_THREADS': '1'})
  assert result.returncode == 0, result.stderr
  assert result.stderr.count(FALLBACK_LOG) == 1, result.stderr
  record = files.read_json(workdir / records.RESULTS_JSON)
  assert record['device'] == ('cpu (1 thread), amp O1 (native, bfloat16, loss scale none, LSTM '
                              'in float32)')
  assert files.read_json(workdir / records.CONFIG_JSON)['backend_options'] == {
      'device': 'cpu', 'amp': 'O1', 'amp_backend': 'native', 'amp_dtype': 'bfloat16',
      'loss_scale': 'none'}

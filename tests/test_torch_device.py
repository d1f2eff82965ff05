"""Device and precision selection of lmf_torch_npu, on a CPU-only machine.

Where a test needs torch_npu or apex to be installed, a FAKE module stands in
(written to a temporary directory and found by the ordinary import system):
it exercises the selection logic only, never a real NPU, and nothing trains on it.
"""

import sys
import textwrap

import pytest
import torch

from flags.errors import ConfigError
from lmf_torch_npu import device
from lmf_torch_npu import model as model_lib
from flags import presets
from flags.config import Config

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


def test_precision_defaults_per_device():
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
  from lmf_torch_npu import train  # pylint: disable=import-outside-toplevel
  assert train.cross_entropy_sum(logits, torch.tensor([0, 1, 1, 0])).dtype == torch.float32


def test_a_numeric_loss_scale_is_static_and_dynamic_is_torchs_default():
  model = model_lib.from_config(Config(emotion='sad', **presets.PRESETS['sad']))
  static = device.prepare(CPU, device.select_precision(CPU, 'O1', '128'), model, None)[2].scaler
  assert static.get_scale() == 128.0 and static.get_growth_interval() == device.NEVER
  dynamic = device.prepare(CPU, device.select_precision(CPU, 'O1', 'dynamic'), model, None)[2]
  assert dynamic.scaler.get_scale() == 2.0**16 and dynamic.scaler.get_growth_interval() == 2000

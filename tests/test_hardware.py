"""flags.hardware and lmf_jax.device: what the system shows, and the one warning line when a
framework leaves a GPU or NPU idle."""

import logging
import re
import subprocess
import sys

import jax
import pytest

from flags import hardware
from lmf_jax import device as jax_device
import run_helpers

H200 = hardware.Accelerator('gpu', 'NVIDIA', 'NVIDIA H200')


def fake_root(tmp_path, gpus=(), dev=()):
  """A tree with /proc/driver/nvidia/gpus/<bus>/information for each model, and /dev nodes."""
  for i, model in enumerate(gpus):
    gpu = tmp_path / 'proc' / 'driver' / 'nvidia' / 'gpus' / f'0000:0{i}:00.0'
    gpu.mkdir(parents=True)
    (gpu / 'information').write_text(f'Model: \t\t {model}\nIRQ:   \t\t 42\nBus Type:\t PCIe\n')
  (tmp_path / 'dev').mkdir(exist_ok=True)
  for name in dev:
    (tmp_path / 'dev' / name).write_text('')
  return str(tmp_path)


def test_an_empty_system_shows_nothing_and_warns_nothing(tmp_path):
  root = fake_root(tmp_path, dev=['null', 'nvidiactl', 'nvidia-uvm', 'davinci_manager'])
  assert hardware.visible_accelerators(root) == []
  assert hardware.unused_accelerator_warning('jax', 'cpu', []) is None


def test_nvidia_gpus_are_read_from_the_driver_with_their_model(tmp_path):
  root = fake_root(tmp_path, gpus=['NVIDIA H200', 'NVIDIA H200'],
                   dev=['nvidia0', 'nvidia1', 'nvidiactl'])
  found = hardware.visible_accelerators(root)
  assert found == [H200, H200]  # /proc counts; the /dev nodes are not counted twice
  warning = hardware.unused_accelerator_warning('jax', 'cpu', found)
  assert warning == ('2 NVIDIA GPUs (NVIDIA H200) are visible but the installed jax runs on the '
                     'CPU: install the CUDA set with `python3 run.py --accelerator=cuda ...` '
                     '(README: On GPUs and NPUs)')


def test_device_nodes_alone_count_gpus_and_npus(tmp_path):
  root = fake_root(tmp_path, dev=['nvidia0', 'nvidiactl', 'nvidia-uvm', 'nvidia-modeset',
                                  'davinci0', 'davinci1', 'davinci_manager', 'devmm_svm'])
  found = hardware.visible_accelerators(root)
  assert [(a.kind, a.vendor, a.name) for a in found] == [
      ('gpu', 'NVIDIA', ''), ('npu', 'Ascend', ''), ('npu', 'Ascend', '')]
  assert hardware.unused_accelerator_warning('torch', 'cpu', found).startswith(
      'an NVIDIA GPU is visible but the installed torch runs on the CPU: install the CUDA set')


def test_an_npu_names_torch_npu_for_torch_and_the_torch_trainer_for_jax(tmp_path):
  found = hardware.visible_accelerators(fake_root(tmp_path, dev=['davinci3']))
  torch_line = hardware.unused_accelerator_warning('torch', 'cpu', found)
  jax_line = hardware.unused_accelerator_warning('jax', 'cpu', found)
  assert torch_line.startswith('an Ascend NPU is visible but the installed torch runs on the CPU')
  assert 'torch_npu' in torch_line and '`python3 run.py --accelerator=npu ...`' in torch_line
  assert 'python -m lmf_torch_npu.train' in jax_line
  for line in (torch_line, jax_line):
    assert '\n' not in line and line.endswith('(README: On GPUs and NPUs)')


def test_no_warning_when_the_framework_uses_an_accelerator():
  for kind in ('cuda', 'gpu', 'npu'):
    assert hardware.unused_accelerator_warning('torch', kind, [H200]) is None


def test_an_unreadable_information_file_leaves_the_model_unnamed(tmp_path):
  (tmp_path / 'proc' / 'driver' / 'nvidia' / 'gpus' / '0000:01:00.0').mkdir(parents=True)
  found = hardware.visible_accelerators(str(tmp_path))
  assert found == [hardware.Accelerator('gpu', 'NVIDIA', '')]


def test_importing_hardware_imports_no_framework():
  code = ('import sys, flags.hardware; '
          'print(sorted(m for m in ("jax", "torch", "numpy") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'


def test_jax_describes_its_devices_in_one_line():
  line = jax_device.describe_devices()
  assert re.fullmatch(r'jax \S+: \d+ \w+ devices? \(.+\)', line), line
  assert line.startswith(f'jax {jax.__version__}: {len(jax.devices())} {jax.default_backend()}')


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='jax runs on an accelerator here')
def test_jax_on_the_cpu_warns_unless_jax_platforms_asked_for_it(monkeypatch, caplog):
  previous = jax.config.jax_platforms
  try:
    jax.config.update('jax_platforms', None)
    assert 'installed jax runs on the CPU' in jax_device.unused_accelerator_warning([H200])
    assert jax_device.unused_accelerator_warning([]) is None
    monkeypatch.setattr(hardware, 'visible_accelerators', lambda: [H200])
    # The absl logger's own level: an in-process parity check may have lowered it to WARNING.
    with caplog.at_level(logging.INFO, logger='absl'):
      jax_device.log_devices()
    assert [r.levelname for r in caplog.records] == ['INFO', 'WARNING']
    assert caplog.records[0].getMessage() == jax_device.describe_devices()
    jax.config.update('jax_platforms', 'cpu')
    assert jax_device.unused_accelerator_warning([H200]) is None
  finally:
    jax.config.update('jax_platforms', previous)


TRAINER_LINES = {'lmf_jax.train': r'jax \S+: \d+ cpu devices? \(cpu:0',
                 'lmf_torch_npu.train': r'torch \S+ on cpu \(.*\); precision float32'}


@pytest.mark.slow
def test_each_trainer_logs_what_its_framework_runs_on(small_data_dir):
  # Both trainers at once: independent processes, each mostly on one core.
  results = run_helpers.run_concurrently(*[
      [sys.executable, '-m', module, f'--data_path={small_data_dir}', '--perf_steps=1',
       '--text_hidden=16', '--batch_size=32'] for module in TRAINER_LINES])
  for (module, line), result in zip(TRAINER_LINES.items(), results):
    assert result.returncode == 0, (module, result.stderr[-2000:])
    assert re.search(line, result.stderr), (module, result.stderr[-2000:])

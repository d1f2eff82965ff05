"""The install sets run.py offers per accelerator (cpu, cuda, npu), checked without hardware or
network: the pins they must share and the ones they must not. Whether pip resolves each set
is `python3 run.py check-install cpu cuda npu` (minutes of index requests, so not a test)."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
_spec = importlib.util.spec_from_file_location('run', os.path.join(ROOT, 'run.py'))
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

CPU = run.read_pins('constraints.txt')
CUDA = run.read_pins('constraints-cuda.txt')
NPU = run.read_pins('constraints-npu.txt')


def test_each_accelerator_has_its_own_environment_pins_and_extras():
  assert run.ACCELERATORS == {
      'cpu': ('.venv', 'constraints.txt', 'jax,torch,dev'),
      'cuda': ('.venv-cuda', 'constraints-cuda.txt', 'jax,cuda,torch,dev'),
      'npu': ('.venv-npu', 'constraints-npu.txt', 'jax,torch,npu,dev'),
  }
  with open(os.path.join(ROOT, '.gitignore'), encoding='utf-8') as f:
    ignored = f.read().split()
  for directory, _, _ in run.ACCELERATORS.values():
    assert directory + '/' in ignored  # switching never leaves an environment to commit


def test_the_extras_run_py_installs_exist():
  tomllib = pytest.importorskip('tomllib')
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    extras = tomllib.load(f)['project']['optional-dependencies']
  for _, _, wanted in run.ACCELERATORS.values():
    assert set(wanted.split(',')) <= set(extras)
  assert extras['cuda'] == ['jax[cuda13]>=0.7.2']
  assert not [r for rs in extras.values() for r in rs if run._canonical(r).startswith('apex')]


def test_the_main_job_stays_lean_and_the_tests_install_every_extra(monkeypatch):
  tomllib = pytest.importorskip('tomllib')
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    extras = tomllib.load(f)['project']['optional-dependencies']
  optional = set(extras) - {'jax', 'torch', 'dev', 'cuda', 'npu'}
  assert set(run.JOB_EXTRAS['test']) == optional == {'cluster', 'data', 'export', 'tensorboard'}
  assert run.JOB_EXTRAS['train'] == ('tensorboard',)  # Ray and ONNX are not the main job's
  for wanted in [r for name in optional for r in extras[name]]:  # pinned, like all CI installs
    name = run._canonical(wanted.split('>')[0].split('=')[0])
    assert name in CPU and name in CUDA and name in NPU
  calls = []
  monkeypatch.setattr(run, 'ensure_environment', lambda a, extras: calls.append(extras))
  run.main(['test'])
  run.main(['train'])
  assert calls == [('cluster', 'data', 'export', 'tensorboard'), ('tensorboard',)]


def test_a_stamp_keeps_the_extras_installed_under_its_fingerprint():
  assert run._installed_extras('abc\n', 'abc') == set()  # before extras existed
  assert run._installed_extras('abc\ncluster,export\n', 'abc') == {'cluster', 'export'}
  assert run._installed_extras('abc\ncluster\n', 'other') is None
  assert run._pip_install('py', 'cpu', extras=['cluster'])[-1] == f'{run.ROOT}[jax,torch,dev,cluster]'


def test_the_cpu_install_command_is_the_one_before_accelerators():
  assert run._pip_install('py', 'cpu', '--quiet') == [
      'py', '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
      '-c', os.path.join(run.ROOT, 'constraints.txt'), '-e', f'{run.ROOT}[jax,torch,dev]']
  command = run._pip_install('py', 'npu')
  assert command[-4:] == ['-c', os.path.join(run.ROOT, 'constraints-npu.txt'),
                          '-e', f'{run.ROOT}[jax,torch,npu,dev]']


@pytest.mark.parametrize('pins', [CUDA, NPU], ids=['cuda', 'npu'])
def test_gpu_and_npu_sets_keep_every_cpu_pin_but_torch(pins):
  """The JAX reference and parity run on the same jax, flax, optax, numpy... everywhere."""
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy'):
    assert pins[name] == CPU[name]
  assert {n: v for n, v in CPU.items() if n != 'torch' and pins.get(n) != v} == {}


def test_the_cuda_set_pins_jax_plugins_of_its_jax_and_pypi_torch_exactly():
  assert CUDA['jax-cuda13-plugin'] == CUDA['jax-cuda13-pjrt'] == CUDA['jax']
  assert CUDA['torch'] == CPU['torch']
  assert CUDA['nvidia-cudnn-cu13'] and not [n for n in CUDA if n.endswith('-cu12')]
  with open(os.path.join(ROOT, 'constraints-cuda.txt'), encoding='utf-8') as f:
    # ===, not ==: a local 2.13.0+cpu build (find-links, the PyTorch CPU index) must not match.
    assert f'torch==={CUDA["torch"]}\n' in f.readlines()


def test_the_npu_set_pins_torch_npu_on_the_torch_release_it_needs():
  assert NPU['torch'] == '2.14.0'
  assert NPU['torch-npu'].split('.post')[0] == NPU['torch']
  assert 'torch-npu' not in CPU and 'torch-npu' not in CUDA


@pytest.mark.parametrize('pins', [CPU, CUDA, NPU], ids=['cpu', 'cuda', 'npu'])
def test_no_set_installs_apex(pins):
  """Ascend's apex is detected at run time; the PyPI project named apex is another one."""
  assert not [name for name in pins if name.startswith('apex')]


@pytest.mark.parametrize('argv, environment, chosen', [
    (['train'], None, 'cpu'),
    (['train'], '', 'cpu'),
    (['--accelerator=cuda', 'train'], None, 'cuda'),
    (['train'], 'npu', 'npu'),
    (['--accelerator=cpu', 'train'], 'cuda', 'cpu'),
])
def test_the_flag_or_the_variable_chooses_the_environment(monkeypatch, argv, environment, chosen):
  if environment is None:
    monkeypatch.delenv('LMF_ACCELERATOR', raising=False)
  else:
    monkeypatch.setenv('LMF_ACCELERATOR', environment)
  calls = []
  monkeypatch.setattr(run, 'ensure_environment',
                      lambda a, extras: calls.append(a))  # None: pip failed
  assert run.main(argv) == 1
  assert calls == [chosen]


@pytest.mark.parametrize('argv, environment', [
    (['--accelerator=tpu', 'train'], None),
    (['train'], 'gpu'),
    (['check-install', 'cuda', 'rocm'], None),
])
def test_an_unknown_accelerator_is_one_line_and_exit_2(monkeypatch, capsys, argv, environment):
  monkeypatch.delenv('LMF_ACCELERATOR', raising=False)
  if environment:
    monkeypatch.setenv('LMF_ACCELERATOR', environment)
  monkeypatch.setattr(run, 'ensure_environment', lambda a, extras: pytest.fail('installed'))
  monkeypatch.setattr(run, 'check_install', lambda a: pytest.fail('checked'))
  assert run.main(argv) == 2
  error = capsys.readouterr().err
  assert error.count('\n') == 1 and 'cpu, cuda or npu' in error


def test_an_older_python_is_one_line_and_exit_2(monkeypatch, capsys):
  monkeypatch.setattr(run, 'MIN_PYTHON', (99, 0))
  monkeypatch.setattr(run, 'ensure_environment', lambda a, extras: pytest.fail('installed'))
  assert run.main(['train']) == 2
  error = capsys.readouterr().err
  assert error.count('\n') == 1 and 'Python 99.0 or newer' in error


def test_an_environment_of_another_python_release_is_made_again(tmp_path):
  (tmp_path / 'pyvenv.cfg').write_text('home = /usr/bin\nversion = 3.10.12\n')
  assert not run._made_by_this_python(str(tmp_path))
  current = '.'.join(str(n) for n in sys.version_info[:3])
  (tmp_path / 'pyvenv.cfg').write_text(f'home = /usr/bin\nversion = {current}\n')
  assert run._made_by_this_python(str(tmp_path))
  assert not run._made_by_this_python(str(tmp_path / 'missing'))

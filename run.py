#!/usr/bin/env python3
"""Set up the project's environment (once) and run one of its jobs in it.

    python3 run.py train --emotion=sad   # the main job: lmf_jax on the synthetic set
    python3 run.py test                  # the test suite (-m slow: its long checks)
    python3 run.py --accelerator=cuda train --emotion=sad   # the same on an NVIDIA GPU

Needs only python3 (3.11 or newer). The first call creates `.venv/` beside
this file and installs the project with its jax, torch and dev extras, pinned
by `constraints.txt` (torch 2.13.0, the CPU build); later calls skip the
install unless pyproject.toml or constraints.txt changed. Optional extras come
with the jobs that use them (JOB_EXTRAS): `test` installs them all (Ray for
populations on a cluster, ONNX for export), so the suite covers them; the main
job stays lean.

--accelerator=cuda|npu (or LMF_ACCELERATOR=cuda|npu) does the same in its own
environment with its own pins, so switching never touches another one:
`.venv-cuda/` (constraints-cuda.txt: jax and torch on CUDA 13) and `.venv-npu/`
(constraints-npu.txt: torch-npu on CANN, jax on the CPU). `check-install
[cpu|cuda|npu ...]` asks pip whether a set resolves here, installing nothing.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
STAMP = '.lmf-install-stamp'
PIP_FOR_CHECKS = 'pip==26.3'  # check-install's pip: the one it was tried with
MIN_PYTHON = (3, 11)  # what the pinned jax, numpy, scipy... require
# accelerator: (environment directory, constraints file, extras)
ACCELERATORS = {
    'cpu': ('.venv', 'constraints.txt', 'jax,torch,dev'),
    'cuda': ('.venv-cuda', 'constraints-cuda.txt', 'jax,cuda,torch,dev'),
    'npu': ('.venv-npu', 'constraints-npu.txt', 'jax,torch,npu,dev'),
}
# pip installs torch-npu without CANN, and then `import torch_npu` fails (no libhccl.so).
NPU_NOTE = ('run.py: torch-npu runs on Huawei CANN, which must be installed first and its '
            'set_env.sh sourced (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh)')
# What a job installs beyond its accelerator's set: the main job stays lean (tensorboardX, for
# its event files, is small); the test command installs every optional extra so CI covers them.
JOB_EXTRAS = {
    'train': ('tensorboard',),
    'train-torch': ('cluster', 'tensorboard'),
    'data': ('data',),
    'test': ('cluster', 'data', 'export', 'tensorboard'),
    'parity': ('export',),
    'export': ('export',),
    'python': ('cluster', 'data', 'export', 'tensorboard'),
}
JOBS = {
    'train': ['-m', 'lmf_jax.train'],
    'train-torch': ['-m', 'lmf_torch_npu.train'],
    'evaluate': ['-m', 'lmf_jax.evaluate'],
    'predict': ['-m', 'lmf_jax.predict'],
    'export': ['-m', 'lmf_torch_npu.export'],
    'export-jax': ['-m', 'lmf_jax.export'],
    'test': ['-m', 'pytest'],
    'parity': ['-m', 'parity'],
    'bench': ['-m', 'parity.bench'],
    'data': ['-m', 'iemocap'],
    'python': [],
}
USAGE = ('usage: python3 run.py [--accelerator=cpu|cuda|npu] JOB ...\njobs: ' + ', '.join(JOBS)
         + ', check-install')


def _python(environment):
  return os.path.join(environment, 'bin', 'python')


def _fingerprint(constraints):
  digest = hashlib.sha256(sys.version.encode())
  for name in ('pyproject.toml', constraints):
    with open(os.path.join(ROOT, name), 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()


def _pip_install(python, accelerator, *options, extras=()):
  """pip's command line installing the project with `accelerator`'s extras (and `extras`) and
  pins."""
  _, constraints, base = ACCELERATORS[accelerator]
  wanted = ','.join([base, *extras])
  return [python, '-m', 'pip', 'install', *options, '--disable-pip-version-check',
          '-c', os.path.join(ROOT, constraints), '-e', f'{ROOT}[{wanted}]']


def _installed_extras(stamp_text, fingerprint):
  """The optional extras an environment's stamp says were installed, or None when the stamp
  is not of this fingerprint (the environment must be installed again)."""
  lines = stamp_text.split('\n')
  if lines[0].strip() != fingerprint:
    return None
  return set(filter(None, (lines[1] if len(lines) > 1 else '').strip().split(',')))


def _made_by_this_python(environment):
  """Whether the environment's Python is this one's release (an older one cannot install the
  pins: it is made again)."""
  try:
    with open(os.path.join(environment, 'pyvenv.cfg'), encoding='utf-8') as f:
      settings = dict(line.split('=', 1) for line in f if '=' in line)
  except OSError:
    return False
  made = {k.strip(): v.strip() for k, v in settings.items()}
  version = made.get('version_info') or made.get('version', '')
  return version.split('.')[:2] == [str(n) for n in sys.version_info[:2]]


def ensure_environment(accelerator, extras=()):
  """Creates the accelerator's environment and installs the project (with `extras`) unless its
  stamp says it is current and holds them; returns its python, or None (after one line) when
  pip failed. Extras installed once stay: the stamp keeps their union."""
  directory, constraints, _ = ACCELERATORS[accelerator]
  environment = os.path.join(ROOT, directory)
  stamp, python = os.path.join(environment, STAMP), _python(environment)
  fingerprint = _fingerprint(constraints)
  installed = None
  if os.path.exists(stamp) and os.path.exists(python):
    with open(stamp, encoding='utf-8') as f:
      installed = _installed_extras(f.read(), fingerprint)
    if installed is not None and set(extras) <= installed:
      return python
  extras = sorted(set(extras) | (installed or set()))
  if not os.path.exists(python) or not _made_by_this_python(environment):
    print(f'run.py: creating {environment}', file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
  if accelerator == 'npu':
    print(NPU_NOTE, file=sys.stderr, flush=True)
  print(f'run.py: installing the project and its pinned dependencies ({constraints}; first run '
        'only)', file=sys.stderr, flush=True)
  if subprocess.run(_pip_install(python, accelerator, '--quiet', extras=extras)).returncode:
    print(f'run.py: pip could not install the {accelerator} set (its message is above); fix '
          'that and run the command again', file=sys.stderr)
    return None
  with open(stamp, 'w', encoding='utf-8') as f:
    f.write(f'{fingerprint}\n{",".join(extras)}\n')
  return python


def _canonical(name):
  return re.sub(r'[-_.]+', '-', name).lower()


def read_pins(constraints):
  """{canonical name: version} of a constraints file's `name==version` (or `===`) lines."""
  pins = {}
  with open(os.path.join(ROOT, constraints), encoding='utf-8') as f:
    for line in f:
      requirement = line.split('#')[0].strip()
      if requirement:
        name, _, version = requirement.partition('==')
        pins[_canonical(name)] = version.lstrip('=')
  return pins


def check_install(accelerator):
  """Resolves `accelerator`'s set with pip in a throwaway environment, installing nothing
  and downloading no wheel: --dry-run, and fast-deps reads a wheel's metadata by range
  requests where the index does not serve it apart (PEP 658). 0 when it resolves without
  apex; the line also names resolved packages the constraints file does not pin."""
  start = time.monotonic()
  with tempfile.TemporaryDirectory() as scratch:
    venv.EnvBuilder(with_pip=True).create(scratch)
    python, report = _python(scratch), os.path.join(scratch, 'report.json')
    # Older pips download every wheel even in a dry run; 25.3 was the first that does not.
    upgrade = [python, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
               PIP_FOR_CHECKS]
    resolve = _pip_install(python, accelerator, '--quiet', '--dry-run', '--ignore-installed',
                           '--use-feature=fast-deps', '--report', report,
                           extras=sorted({e for job in JOB_EXTRAS.values() for e in job}))
    if subprocess.run(upgrade).returncode or subprocess.run(resolve).returncode:
      print(f'run.py: pip cannot resolve the {accelerator} set (its message is above)',
            file=sys.stderr)
      return 1
    with open(report, encoding='utf-8') as f:
      resolved = {_canonical(item['metadata']['name']): item['metadata']['version']
                  for item in json.load(f)['install']}
  resolved.pop('lmf-iemocap')
  seconds = time.monotonic() - start
  if 'apex' in resolved:
    print(f'run.py: the {accelerator} set would install apex (the unrelated PyPI project); '
          'find what requires it and constrain it away', file=sys.stderr)
    return 1
  constraints = ACCELERATORS[accelerator][1]
  pins = read_pins(constraints)
  unpinned = ', '.join(f'{name} {version}' for name, version in sorted(resolved.items())
                       if name not in pins)
  pinned = f'not pinned by {constraints}: {unpinned}' if unpinned else 'all pinned'
  print(f'run.py: the {accelerator} set resolves: {len(resolved)} packages in {seconds:.0f} s, '
        f'{pinned}', file=sys.stderr)
  return 0


def main(argv):
  accelerator = os.environ.get('LMF_ACCELERATOR') or 'cpu'
  if argv and argv[0].startswith('--accelerator='):
    accelerator, argv = argv[0].partition('=')[2], argv[1:]
  if accelerator not in ACCELERATORS:
    print(f'run.py: unknown accelerator {accelerator!r}: use --accelerator=cpu, cuda or npu '
          '(or LMF_ACCELERATOR=...)', file=sys.stderr)
    return 2
  if sys.version_info < MIN_PYTHON:
    needed = '.'.join(map(str, MIN_PYTHON))
    print(f'run.py: the pinned environments need Python {needed} or newer, this is '
          f'{sys.version.split()[0]}: run it with python{needed} or newer', file=sys.stderr)
    return 2
  if argv[:1] == ['check-install']:
    unknown = [name for name in argv[1:] if name not in ACCELERATORS]
    if unknown:
      print(f'run.py: unknown accelerator {unknown[0]!r}: check-install takes cpu, cuda or npu',
            file=sys.stderr)
      return 2
    return max(check_install(name) for name in argv[1:] or [accelerator])
  if not argv or argv[0] not in JOBS:
    print(__doc__.strip() + '\n\n' + USAGE, file=sys.stderr)
    return 2
  python = ensure_environment(accelerator, JOB_EXTRAS.get(argv[0], ()))
  if python is None:
    return 1
  command = [python] + JOBS[argv[0]] + argv[1:]
  os.execv(command[0], command)  # in the caller's directory: relative paths mean what they say


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

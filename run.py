#!/usr/bin/env python3
"""Set up the project's environment (once) and run one of its jobs in it.

    python3 run.py train --emotion=sad   # the main job: lmf_jax on the synthetic set
    python3 run.py test                  # the whole test suite

Needs only python3. The first call creates `.venv/` beside this file and
installs the project with its jax, torch and dev extras, pinned by
`constraints.txt` (torch 2.13.0, the CPU build); later calls skip the install
unless pyproject.toml or constraints.txt changed.
"""

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, '.venv')
STAMP = os.path.join(VENV, '.lmf-install-stamp')
INPUTS = ('pyproject.toml', 'constraints.txt')
JOBS = {
    'train': ['-m', 'lmf_jax.train'],
    'train-torch': ['-m', 'lmf_torch_npu.train'],
    'evaluate': ['-m', 'lmf_jax.evaluate'],
    'test': ['-m', 'pytest'],
    'parity': ['-m', 'parity'],
    'bench': ['-m', 'parity.bench'],
    'data': ['-m', 'iemocap'],
    'python': [],
}


def _python():
  return os.path.join(VENV, 'bin', 'python')


def _fingerprint():
  digest = hashlib.sha256(sys.version.encode())
  for name in INPUTS:
    with open(os.path.join(ROOT, name), 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()


def ensure_environment():
  """Creates .venv and installs the project unless the stamp says it is current."""
  fingerprint = _fingerprint()
  if os.path.exists(STAMP) and os.path.exists(_python()):
    with open(STAMP, encoding='utf-8') as f:
      if f.read().strip() == fingerprint:
        return
  if not os.path.exists(_python()):
    print(f'run.py: creating {VENV}', file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
  print('run.py: installing the project and its pinned dependencies (first run only)',
        file=sys.stderr, flush=True)
  subprocess.run([_python(), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
                  '-c', os.path.join(ROOT, 'constraints.txt'),
                  '-e', f'{ROOT}[jax,torch,dev]'], check=True)
  with open(STAMP, 'w', encoding='utf-8') as f:
    f.write(fingerprint + '\n')


def main(argv):
  if not argv or argv[0] not in JOBS:
    print(__doc__.strip() + '\n\njobs: ' + ', '.join(JOBS), file=sys.stderr)
    return 2
  ensure_environment()
  command = [_python()] + JOBS[argv[0]] + argv[1:]
  os.execv(command[0], command)  # in the caller's directory: relative paths mean what they say


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

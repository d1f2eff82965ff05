"""Workdirs: one run's directory, its default name, its lock and its claim.

A workdir belongs to one configuration; it is never overwritten, a second
process is refused, and a killed run leaves nothing that blocks the next one.
"""

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import stat

from absl import logging

from engine.errors import RunError
from engine.records import (CONFIG_JSON, LOCK, MEMBERS_DIR, OUTPUTS, RESULTS_JSON, TRAIN_STATE,
                            TRIALS_DIR)
from flags.config import Config
from iemocap import synthetic
from iemocap.files import read_json, write_json

_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # some NFS, FUSE, Lustre mounts


def default_workdir(config, backend, options):
  """runs/<backend>-<emotion>-<fingerprint of the config, backend options and synthetic data>."""
  identity = {'options': options}
  if not config.data_path:
    identity['synthetic_version'] = synthetic.VERSION  # a new stand-in is a new run
  blob = json.dumps(identity, sort_keys=True).encode()
  fingerprint = hashlib.sha256(config.fingerprint().encode() + blob).hexdigest()[:10]
  return os.path.join('runs', f'{backend}-{config.emotion}-{fingerprint}')


def resolve_workdir(config: Config, backend: str, options: dict) -> Config:
  """The config with its workdir filled in (the default one when --workdir is empty)."""
  return dataclasses.replace(config, workdir=config.workdir or default_workdir(config, backend,
                                                                                options))


def _saved_run(workdir):
  """config.json of the run in `workdir`, checked to be one this project wrote."""
  path = os.path.join(workdir, CONFIG_JSON)
  try:
    saved = read_json(path)
  except (ValueError, UnicodeDecodeError) as e:
    raise RunError(f'{path} is not valid JSON ({e}): it is damaged or was not written by this '
                   'project; choose another --workdir') from None
  if not (isinstance(saved, dict) and isinstance(saved.get('config'), dict)
          and isinstance(saved.get('backend'), str)):
    raise RunError(f'{path} is not a run configuration written by this project: choose another '
                   '--workdir')
  return saved


def _same_data(saved, mine):
  """Whether two stored data paths name the same data: runs before paths were stored absolute
  hold them as given, relative to where the run started."""
  if saved == mine:
    return True
  if not isinstance(saved, str) or not saved or not mine:
    return False
  if os.path.abspath(saved) == mine:
    return True
  try:
    return os.path.samefile(saved, mine)
  except OSError:
    return False


def _differences(saved, config, backend, options):
  """The names of what differs between a saved run and this one."""
  mine = config.to_dict()
  differences = [k for k in mine if k not in ('workdir', 'data_path')
                 and saved['config'].get(k) != mine[k]]
  if not _same_data(saved['config'].get('data_path'), mine['data_path']):
    differences.append('data_path')
  if saved.get('backend') != backend:
    differences.insert(0, 'backend')
  if saved.get('backend_options', {}) != options:
    differences.append('backend options')
  return differences


def prepare_workdir(config: Config, backend: str, options: dict, resume: bool,
                    write: bool = True) -> tuple[Config, str]:
  """(config with its workdir resolved, status): status is 'new', 'resume' or 'complete'.

  A workdir belongs to one configuration: another one is refused, never
  overwritten. A finished run (results.json, written last) is reported again
  rather than retrained; an interrupted one continues only with --resume; one
  stopped before its first epoch was saved (config.json alone) starts again,
  with this command's configuration. A workdir without config.json that holds
  any file a run writes holds someone else's files: refused, since the run
  would replace them. `write=False` only reads (the other processes of a multi-process run).
  """
  config = resolve_workdir(config, backend, options)
  workdir = config.workdir
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunError(f'workdir {workdir} is a file: choose a directory for --workdir')
  saved_path = os.path.join(workdir, CONFIG_JSON)
  present = [name for name in OUTPUTS if name != CONFIG_JSON
             and os.path.lexists(os.path.join(workdir, name))]
  if os.path.exists(saved_path):
    differences = _differences(_saved_run(workdir), config, backend, options)
    if differences and present:
      raise RunError(f'workdir {workdir} holds a run with another configuration (differs in '
                     f'{", ".join(differences)}): choose another --workdir')
    if not differences and RESULTS_JSON in present:
      return config, 'complete'
    if not differences and (TRAIN_STATE in present or TRIALS_DIR in present):
      if not resume:
        raise RunError(f'workdir {workdir} holds an interrupted run: pass --resume to continue '
                       'it, or choose another --workdir')
      return config, 'resume'
  else:
    if resume:
      raise RunError(f'--resume: workdir {workdir} holds no run to continue')
    if present:
      raise RunError(f'workdir {workdir} already holds {", ".join(present)} but no '
                     f'{CONFIG_JSON}: they are not this project\'s and a run would replace them; '
                     'choose another --workdir')
  if write:
    write_json(saved_path, {'config': config.to_dict(), 'backend': backend,
                            'backend_options': options})
  return config, 'new'


def _open_lock(path, workdir):
  """The locked lock file's descriptor; None where locking cannot work (see workdir_lock)."""
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
      if e.errno == errno.ELOOP:
        raise RunError(f'{path} is a symbolic link, not this project\'s lock file: choose '
                       'another --workdir') from None
      if e.errno in _READ_ONLY and os.path.exists(os.path.join(workdir, RESULTS_JSON)):
        return None  # a finished run on read-only storage: reporting it writes nothing
      raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      os.close(fd)
      raise RunError(f'{path} is not a regular file: choose another --workdir')
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode('utf-8', 'replace').strip() or 'another process'
      os.close(fd)
      raise RunError(f'workdir {workdir} is in use by {holder}: wait for it to finish, stop it, '
                     'or choose another --workdir') from None
    except OSError as e:
      os.close(fd)
      if e.errno not in _NO_LOCKS:
        raise
      logging.warning('%s: this file system cannot lock files (%s): nothing stops a second '
                      'process from using this workdir at the same time', workdir, e.strerror)
      return None
    try:
      current = os.stat(path, follow_symlinks=False)
      locked = os.fstat(fd)
      if (current.st_dev, current.st_ino) == (locked.st_dev, locked.st_ino):
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # its holder removed that file while we opened it: lock the one there now


@contextlib.contextmanager
def workdir_lock(workdir):
  """Holds an exclusive lock on `workdir` for a run: a second process is refused.

  flock belongs to the open file: the kernel releases it when the process ends,
  however it ends, so a killed run never blocks the next one. The lock file
  names its holder for the refusal message. A lock file, and a workdir, that
  this call created are removed again when no config.json stayed behind;
  whoever locks next checks that the file it locked is still the one there.
  On file systems without flock (some NFS, FUSE, Lustre mounts) the run goes
  on unlocked, with a warning; a finished run on read-only storage is
  reported without a lock.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunError(f'workdir {workdir} is a file: choose a directory for --workdir')
  created_dir = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  created_lock = not os.path.lexists(path)
  fd = None
  try:
    fd = _open_lock(path, workdir)
    if fd is not None:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode(), 0)
    yield
  finally:
    if fd is not None:
      os.ftruncate(fd, 0)
      if created_lock and not os.path.exists(os.path.join(workdir, CONFIG_JSON)):
        os.unlink(path)
      os.close(fd)
    if created_dir and os.path.isdir(workdir) and not os.listdir(workdir):
      os.rmdir(workdir)


@contextlib.contextmanager
def claim_workdir(config: Config, backend: str, options: dict, resume: bool):
  """prepare_workdir under the workdir's lock, held until the run ends: yields (config, status).

  Temporary files of writes cut short by an earlier kill are removed here: no
  other process can be writing them while the lock is held. A new run that
  fails before its first epoch is saved takes its config.json back, so the
  corrected command can use the same workdir.
  """
  config = resolve_workdir(config, backend, options)
  with workdir_lock(config.workdir):
    saved_path = os.path.join(config.workdir, CONFIG_JSON)
    had_config = os.path.exists(saved_path)
    config, status = prepare_workdir(config, backend, options, resume)
    remove_temporary_files(config.workdir)
    try:
      yield config, status
    except BaseException:
      if (status == 'new' and not had_config
          and not any(os.path.lexists(os.path.join(config.workdir, name))
                      for name in OUTPUTS if name != CONFIG_JSON)):
        os.unlink(saved_path)
      raise


def remove_temporary_files(workdir):
  """Deletes the temporary files iemocap.files.atomic_write leaves behind when killed mid-write
  (`.<name>.` and mkstemp's 8 characters), and nothing else."""
  pattern = re.compile(r'\.(.+)\.[a-z0-9_]{8}')
  for directory, names in ((workdir, OUTPUTS), (os.path.join(workdir, MEMBERS_DIR), None)):
    if not os.path.isdir(directory):
      continue
    for entry in os.listdir(directory):
      match = pattern.fullmatch(entry)
      if not match or not os.path.isfile(os.path.join(directory, entry)):
        continue
      if (match.group(1) in names) if names else match.group(1).endswith('.safetensors'):
        os.unlink(os.path.join(directory, entry))


def holds_run(config: Config, backend: str, options: dict) -> bool:
  """Whether the workdir `config` resolves to holds a run (its config.json), finished or not."""
  return os.path.exists(os.path.join(resolve_workdir(config, backend, options).workdir,
                                     CONFIG_JSON))

"""Atomic file writes: a temporary file in the same directory, then a rename over the target."""

import json
import os
import tempfile


def _current_umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _current_umask()


def temporary_prefix(name):
  """The start of the temporary file's name while `name` is being written."""
  return '.' + name + '.'


def atomic_write(path, write, binary=True):
  """Calls write(file) on a temporary file beside `path`, then renames it over `path`."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=temporary_prefix(os.path.basename(path)))
  try:
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
    with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'newline': '', 'encoding': 'utf-8'})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
      raise OSError(e.errno, e.strerror, path) from None  # a failed write names no file itself
    raise


def write_text(path, text):
  atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path, obj):
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + '\n')


def read_json(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)

"""What every command line shares: process set-up, and how it ends on a user error.

A command line ends in one line on stderr and a non-zero exit for every problem
the user can fix: a UserError (exit 2), an OS error while reading or writing
(exit 2: a full disk, a path below a file, a size limit), or an interrupt
(exit 128 + the signal's number). Files already written are complete: every
write is atomic, so `--resume` continues once the cause is fixed.
"""

import argparse
import ctypes
import errno
import functools
import os
import signal
import sys

from absl import flags
from absl import logging

from engine.errors import StopRequested
from flags.errors import ConfigError
from iemocap.errors import UserError

# What to do about an OS error, by errno; the rest get the system's own words only.
_OS_ERROR_FIXES = {
    errno.ENOSPC: 'the disk is full: free space',
    errno.EDQUOT: 'the disk quota is exceeded: free space',
    errno.EFBIG: 'the file is larger than this process may write (ulimit -f): raise the limit',
    errno.EROFS: 'the file system is read-only: choose a writable directory',
    errno.EACCES: 'permission denied: choose a directory you may write',
    errno.EPERM: 'permission denied: choose a directory you may write',
    errno.ENOTDIR: 'a part of the path is a file, not a directory: choose another path',
    errno.EEXIST: 'a file is in the way: choose another path',
    errno.EISDIR: 'the path is a directory: name a file',
    errno.ENOENT: 'a file or directory on the way is missing: check the path',
}


def describe_os_error(e):
  """One line for an OSError of a known errno: what failed, on which file, and what to do."""
  what = e.strerror or type(e).__name__
  where = f' ({e.filename})' if e.filename else ''
  return (f'{what}{where}; {_OS_ERROR_FIXES[e.errno]}' +
          '. Files written so far are complete: once fixed, rerun the same command (with '
          '--resume if a training run had finished an epoch)')


def user_errors_exit(main):
  """Wraps an absl main so a user-fixable problem prints `error: <one line>` and exits non-zero."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(getattr(e, 'exit_code', 2))
    except OSError as e:
      if e.errno not in _OS_ERROR_FIXES or not e.filename:
        raise  # not the machine's state but a fault of ours: keep the traceback
      print(f'error: {describe_os_error(e)}', file=sys.stderr)
      sys.exit(2)
    except (MemoryError, RuntimeError) as e:
      # torch reports a failed allocation as a RuntimeError (OutOfMemoryError on GPUs).
      text = str(e).lower()
      if not isinstance(e, MemoryError) and not ('out of memory' in text
                                                 or "can't allocate memory" in text):
        raise
      print('error: out of memory: use a smaller --batch_size or model, or a machine with more '
            'memory', file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt as e:
      signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
      print(f'error: stopped by {signal.Signals(signum).name}; every file written so far is '
            'complete: rerun the same command to start again, or with --resume to continue a run '
            'that had saved an epoch', file=sys.stderr)
      # Out at once: a normal exit would finalise the interpreter while XLA may still be compiling
      # on its own threads, which crashed the process (SIGSEGV) after this line. The `with`
      # blocks the interrupt passed through have already cleaned up; only stdio needs a flush.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access

  return wrapped


def parse_flags(argv):
  """app.run's flags_parser: a bad or unknown flag is one `error:` line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = ' '.join(str(e).split())
    print(f'error: {message}: see --help for the flags', file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the commands that use it (parity, bench, data): a bad argument is one
  `error:` line and exit 2, not the usage text."""

  def error(self, message):
    print(f'error: {message}: see {self.prog} --help', file=sys.stderr)
    sys.exit(2)


def check_output_file(path, flag):
  """Refuses, before any work, an output path that cannot be written: a directory, or one below
  a file. Creates its parent directory."""
  if os.path.isdir(path):
    raise UserError(f'{flag}={path} is a directory: name a file')
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  except OSError as e:
    fix = _OS_ERROR_FIXES.get(e.errno, 'choose another path')
    raise UserError(f'{flag}={path}: {e.strerror} ({e.filename}); {fix}') from None


def refuse_arguments(argv):
  """absl leaves non-flag words in argv; one line instead of the usage text."""
  if len(argv) > 1:
    raise UserError(f'unexpected argument {argv[1]!r}: flags are written --name=value '
                    '(see --help)')


class StopOnSignal:
  """SIGINT and SIGTERM (a scheduler's stop) end a run at its next safe point.

  The first signal asks the run to stop after the epoch it is in, once that
  epoch is saved (`check`, the protocol's on_epoch_end, then raises
  StopRequested); a second one stops at once with KeyboardInterrupt. Only
  command lines install it: libraries never change signal handlers.
  """

  def __init__(self):
    self.received = None

  def install(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.received is not None:
      raise KeyboardInterrupt(signum)
    self.received = signum
    logging.warning('%s: stopping once this epoch is saved (send it again to stop now)',
                    signal.Signals(signum).name)

  def check(self, epoch):  # pylint: disable=unused-argument
    if self.received is not None:
      raise StopRequested(signal.Signals(self.received).name, 128 + self.received)


def reuse_freed_memory():
  """Has glibc keep freed memory in the heap instead of returning it to the OS.

  XLA's CPU runtime allocates a program's temporary buffers on every call. Above
  glibc's mmap threshold (at most 32 MB) each call then maps fresh pages and
  faults them in, which was a quarter of a train step on the development CPU.
  The cost is resident memory that is not given back (at least the peak; more
  if the heap fragments); training processes reuse it at once. Blocks of 64 MB
  and more asked for by other threads still come from mmap. Returns False off
  Linux or where the C library has no mallopt.
  """
  if not sys.platform.startswith('linux'):
    return False
  mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
  if mallopt is None:
    return False
  m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
  return all([mallopt(m_mmap_max, 0), mallopt(m_trim_threshold, 2**31 - 1)])


def parse_batch(text):
  """An export command's --batch: None for 'dynamic', else the fixed batch size."""
  if text == 'dynamic':
    return None
  try:
    batch = int(text)
  except ValueError:
    batch = 0
  if batch < 1:
    raise ConfigError(f'--batch={text}: dynamic, or a batch size >= 1')
  return batch

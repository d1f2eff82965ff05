"""What every command line shares: process set-up, and how it ends on a user error."""

import ctypes
import functools
import sys

from iemocap.errors import UserError


def user_errors_exit(main):
  """Wraps an absl main so a UserError prints `error: <message>` and exits 2, no traceback."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  return wrapped


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

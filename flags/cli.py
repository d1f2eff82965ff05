"""How every command line ends on a user error: one line on stderr, exit status 2."""

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

"""The project's user-facing errors: each message is one line naming the problem and the fix."""


class UserError(Exception):
  """A problem the user can fix; command lines print `error: <message>` and exit 2."""
  exit_code = 2


class DataError(UserError, ValueError):
  """The data file or a request for it is unusable."""

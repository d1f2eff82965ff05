"""The engine's errors: a run that cannot go on, a checkpoint that does not fit, a stop request."""

from iemocap.errors import UserError


class RunError(UserError, RuntimeError):
  """A run cannot start or go on (a diverged loss, a workdir that holds another run)."""


class NoModel(RunError):
  """A run ended before any model was kept: its loss was not finite from the first epoch."""


class CheckpointError(UserError, ValueError):
  """A checkpoint file is missing, unreadable, or does not fit the model."""


class StopRequested(Exception):
  """Raised by a run's on_epoch_end hook to stop after a saved epoch (e.g. on SIGTERM)."""

  def __init__(self, reason, exit_code):
    super().__init__(reason)
    self.reason, self.exit_code = reason, exit_code


class Interrupted(UserError):
  """A run stopped on request at a safe point; `--resume` continues it."""

  def __init__(self, message, exit_code):
    super().__init__(message)
    self.exit_code = exit_code

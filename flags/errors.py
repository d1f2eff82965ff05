"""Configuration errors: one line naming the bad value and what is allowed."""

from iemocap.errors import UserError


class ConfigError(UserError, ValueError):
  """A flag, preset file or saved configuration holds an unusable value."""

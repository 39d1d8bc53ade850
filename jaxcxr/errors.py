"""The one base class of the errors a user fixes (bad config, missing data, unreadable checkpoint, ...).

Every command catches `UserError` in one place (`cli.run_main`): one line on stderr, exit code 2, no
traceback. Anything else is a bug and keeps its traceback. Modules subclass it for their own errors so a
caller can still tell them apart.
"""


class UserError(Exception):
  """Something the user can fix; the message says what and how."""


class ConfigError(UserError, ValueError):
  """A config field has a value that cannot work; the message names the field, the value and what is allowed."""

"""The one base class of the errors a user fixes (bad config, missing data, unreadable checkpoint, ...).

Every command catches `UserError` in one place (`cli.run_main`): one line on stderr, exit code 2, no
traceback. Anything else is a bug and keeps its traceback. Modules subclass it for their own errors so a
caller can still tell them apart.
"""


class UserError(Exception):
  """Something the user can fix; the message says what and how."""


class Preempted(UserError):
  """The run was asked to stop (SIGTERM, or a first Ctrl-C) and saved a checkpoint to resume from."""
  # Distinct from a user's error (2): a scheduler or a wrapper script can tell "rerun me" apart.
  exit_code = 75  # EX_TEMPFAIL: a temporary failure; rerunning the same command continues the run.


class ConfigError(UserError, ValueError):
  """A config field has a value that cannot work; the message names the field, the value and what is allowed."""

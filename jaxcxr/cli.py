"""What every jaxcxr command shares: quiet library logs and one clear line for a user's error."""

import contextlib
import logging as pylogging
import sys

from absl import logging


class _QuietLibraries(pylogging.Filter):
  """Keeps Orbax's and Grain's per-save INFO chatter out of the console; their warnings still show."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "etils"))


def setup_logging():
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


@contextlib.contextmanager
def user_errors(prog, *errors):
  """Turns `errors` (bad data, config or checkpoint: things the user fixes) into one line and exit 1."""
  try:
    yield
  except errors as e:
    print(f"\n{prog}: {e}", file=sys.stderr)
    sys.exit(1)

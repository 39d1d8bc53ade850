"""What every jaxcxr command shares: quiet library logs and one clear line for a user's error."""

import contextlib
import logging as pylogging
import os
import sys

from absl import app
from absl import logging

from jaxcxr import errors


class _QuietLibraries(pylogging.Filter):
  """Keeps Orbax's and Grain's per-save INFO chatter out of the console; their warnings still show."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "etils"))


def setup_logging():
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def start(argv, *, logs=True):
  """What every command's main does first: refuse stray arguments (a usage error), then set up logging."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if logs:
    setup_logging()


@contextlib.contextmanager
def user_errors(prog, *extra):
  """Turns a user's error (errors.UserError and `extra`) into one line on stderr and exit code 2."""
  try:
    yield
  except (errors.UserError, *extra) as e:
    print(f"\n{prog}: {e}", file=sys.stderr)
    sys.exit(2)


def run_config(config, workdir):
  """The --config given, else the one the run in `workdir` was trained with (WORKDIR/config.json)."""
  if config is not None:
    return config
  from jaxcxr import runfolder  # pylint: disable=g-import-not-at-top  (keeps `cli` light for every command)
  return runfolder.read_config(workdir)


def run(main, prog):
  """`absl.app.run(main)` with user errors caught in one place: every command's `__main__` calls this."""
  def guarded(argv):
    with user_errors(prog):
      return main(argv)
  app.run(guarded)


def enable_compilation_cache(path, *, min_compile_time_secs=1.0, min_entry_size_bytes=0):
  """Turns on JAX's persistent compilation cache in `path` ('' leaves it off); returns the folder or None.

  A rerun (or a resumed job, or an evaluation of the same model) then reads its compiled steps from the
  cache instead of compiling them again: minutes saved for a ResNet-50 on GPU. Programs that compiled in
  under `min_compile_time_secs` are not worth a file and are not cached. Call it before the first compile:
  JAX opens the cache once per process. `path` may be a local folder (created here) or a gs:// URL.
  """
  if not path:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  if "://" not in path:
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
  return path

"""What every jaxcxr command shares: quiet library logs and one clear line for a user's error."""

import contextlib
import logging as pylogging
import os
import sys
import traceback

from absl import app
from absl import flags
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
  """Turns a user's error (errors.UserError and `extra`) into one line on stderr and exit code 2 (or the
  error's own `exit_code`, e.g. errors.Preempted's 75)."""
  try:
    yield
  except (errors.UserError, *extra) as e:
    print(f"\n{prog}: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 2))


def run_config(config, workdir):
  """The --config given, else the one the run in `workdir` was trained with (WORKDIR/config.json)."""
  if config is not None:
    return config
  from jaxcxr import runfolder  # pylint: disable=g-import-not-at-top  (keeps `cli` light for every command)
  return runfolder.read_config(workdir)


def _flag_error_line(error):
  """The one line to show for an error raised while absl parses the flags, or None (show it in full).

  A config file that raises errors.UserError (an unknown arm token) reaches absl wrapped twice, with the
  traceback in the message: the UserError's own message is the line. An override of a field the config
  lacks (--config.train.batch_sizee=4) surfaces as a bare KeyError/AttributeError from ml_collections'
  config_path. A one-line flags.Error (a bad or missing flag value) is shown as it is. Anything else
  (a config file that crashes) keeps its full text: that is a bug to read, not a value to fix.
  """
  cause, deepest = error, None
  while cause is not None:
    if isinstance(cause, errors.UserError):
      deepest = cause  # ml_collections re-raises the same type with a traceback as its message.
    cause = cause.__cause__ or cause.__context__
  if deepest is not None and str(deepest).strip():
    return str(deepest).strip().splitlines()[0]
  if isinstance(error, (KeyError, AttributeError)):
    frames = traceback.extract_tb(error.__traceback__)
    if any(f.filename.endswith(os.path.join("ml_collections", "config_flags", "config_path.py")) for f in frames):
      inner = error.args[0] if error.args else error
      text = " ".join(str(inner.args[0] if isinstance(inner, Exception) and inner.args else inner).split())
      return f"--config override names a field the config does not have: {text}"
  if isinstance(error, flags.Error) and "\n" not in str(error).strip():
    return str(error).strip() + " (--helpshort lists the flags)"
  return None


def parse_flags(prog):
  """A flags_parser for absl.app.run: a bad flag or config value is one line on stderr and exit code 2."""
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError) as e:
      line = _flag_error_line(e)
      if line is None:
        if not isinstance(e, flags.Error):
          raise
        sys.stderr.write(f"FATAL Flags parsing error:\n{e}\n")
        sys.exit(1)
      print(f"{prog}: {line}", file=sys.stderr)
      sys.exit(2)
  return parse


def run(main, prog):
  """`absl.app.run(main)` with user errors caught in one place: every command's `__main__` calls this.

  Flag parsing goes through `parse_flags`, so a bad config value or an unknown arm token given on the
  command line is one line and exit code 2 too.
  """
  def guarded(argv):
    with user_errors(prog):
      return main(argv)
  app.run(guarded, flags_parser=parse_flags(prog))


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

"""Trains and evaluates a chest X-ray classifier described by an ml_collections config.

  python -m jaxcxr.main --config=configs/demo.py --workdir=/tmp/jaxcxr_demo
  python -m jaxcxr.main --config=configs/hernia.py:focal --config.data.dir=/data/nih --workdir=/tmp/hernia

Rerunning the same command in the same workdir resumes from its latest checkpoint. The test report is
written to WORKDIR/report/ (report.json, report.md, roc.png, pr.png).
"""

import logging as pylogging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxcxr import train
from jaxcxr.data import nih

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the report; a rerun resumes from it.")
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an arm: configs/hernia.py:focal. Override fields with "
    "--config.FIELD=VALUE (e.g. --config.train.num_steps=100).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(pylogging.Filter):
  """Keeps Orbax's and Grain's per-save INFO chatter out of the console; their warnings still show."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "etils"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (nih.DataError, train.NonFiniteLossError) as e:
    print(f"\njaxcxr: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)

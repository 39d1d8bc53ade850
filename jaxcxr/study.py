"""The imbalance study: every arm of a config, over several seeds, compared on the target class.

  python -m jaxcxr.study --config=configs/demo.py:quick --workdir=/tmp/jaxcxr_study
  python -m jaxcxr.study --config=configs/hernia.py --config.data.dir=/data/chestxray14 --workdir=/tmp/hernia_study
  python -m jaxcxr.study --config=configs/demo.py:quick --workdir=/tmp/s --arms=baseline,focal --seeds=1

How the runs are planned, skipped, resumed and aggregated, and what is written: jaxcxr/study_runner.py.
"""

from jaxcxr import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages(__spec__, __file__)  # First: glibc reads its tunables only at start.

# pylint: disable=g-import-not-at-top,wrong-import-position

import os
import sys

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr import study_runner

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The study's folder: one subfolder per arm and seed, then study.md, "
                    "study.csv, study_runs.csv, study.json and study.png. A rerun skips finished runs.")
config_flags.DEFINE_config_file(
    "config", None, "Config file without an arm, optionally with modifiers: configs/demo.py:quick, "
    "configs/hernia.py. Each arm of jaxcxr/arms.py is added in turn. --config.FIELD=VALUE overrides "
    "apply to every run.", lock_config=True)
flags.DEFINE_list("arms", None, "Arms to run (default: every arm in jaxcxr/arms.py ARMS).")
flags.DEFINE_integer("seeds", None, f"Runs per arm, with config.seed, config.seed + 1, ... (default "
                     f"{study_runner.QUICK_SEEDS} for a ':quick' config string, else {study_runner.DEFAULT_SEEDS}).")
flags.DEFINE_integer("bootstrap_samples", 1000, "Patient-bootstrap samples of the intervals (0: none).")
flags.DEFINE_float("alpha", 0.05, "1 - confidence level of the intervals.")
flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap resampling.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.start(argv)
  config_check.check(FLAGS.config)
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  os.makedirs(workdir, exist_ok=True)
  if not jax.config.jax_compilation_cache_dir:
    # Seeds (and arms sharing a loss) compile the same steps: compile each once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
  config_string = config_flags.get_config_filename(FLAGS["config"])
  make_config = study_runner.config_factory(config_string, config_flags.get_override_values(FLAGS["config"]))
  num_seeds = FLAGS.seeds if FLAGS.seeds is not None else study_runner.default_seeds(config_string)
  logging.info("Study of %s over %d seed(s) in %s.", config_string, num_seeds, workdir)
  study_runner.run_study(make_config, workdir, arms=FLAGS.arms, num_seeds=num_seeds,
                         bootstrap_samples=FLAGS.bootstrap_samples, alpha=FLAGS.alpha,
                         bootstrap_seed=FLAGS.bootstrap_seed,
                         command="python -m jaxcxr.study " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  cli.run(main, "jaxcxr.study")

"""Evaluates a saved checkpoint: thresholds and calibration from validation, patient-bootstrap intervals.

  python -m jaxcxr.evaluate --config=configs/demo.py --workdir=/tmp/jaxcxr_demo
  python -m jaxcxr.evaluate --workdir=/tmp/hernia --checkpoint=latest --split=test \
      --threshold_rule=target_recall --target_recall=0.9 --calibration=temperature --bootstrap_samples=2000

Without --config, the config the run was trained with (WORKDIR/config.json) is used. The report goes to
WORKDIR/eval/<checkpoint>-<split>/ (see jaxcxr/evaluation.py for what it holds).
"""

from jaxcxr import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages(__spec__, __file__)  # First: glibc reads its tunables only at start.

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags
from ml_collections import config_flags

from jaxcxr import calibration
from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr import evaluation
from jaxcxr import metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's folder (holding checkpoints/ and config.json).")
config_flags.DEFINE_config_file(
    "config", None, "The run's config file and arm, with the overrides it was trained with "
    "(e.g. configs/hernia.py:focal --config.data.dir=...). Default: WORKDIR/config.json.", lock_config=True)
flags.DEFINE_string("checkpoint", "best", "'best' (validation AUPRC of the target), 'latest' or a step number.")
flags.DEFINE_enum("split", "test", evaluation.SPLITS, "The split to evaluate.")
flags.DEFINE_enum("threshold_rule", None, metrics.THRESHOLD_RULES,
                  "Threshold rule on validation (default: the config's train.threshold_rule).")
flags.DEFINE_float("target_recall", None, "Recall for --threshold_rule=target_recall (default: the config's).")
flags.DEFINE_enum("calibration", "none", calibration.METHODS, "Per-class calibration fitted on validation.")
flags.DEFINE_integer("bootstrap_samples", 1000, "Patient-bootstrap samples for the intervals (0: none).")
flags.DEFINE_float("alpha", 0.05, "1 - confidence level of the intervals.")
flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap.")
flags.DEFINE_string("out_dir", None, "Report folder (default: WORKDIR/eval/<checkpoint>-<split>).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  cli.start(argv)
  config = cli.run_config(FLAGS.config, FLAGS.workdir)
  config_check.check(config)
  evaluation.evaluate_checkpoint(
      config, FLAGS.workdir, checkpoint=FLAGS.checkpoint,
      split=FLAGS.split, threshold_rule=FLAGS.threshold_rule, target_recall=FLAGS.target_recall,
      calibration=FLAGS.calibration, bootstrap_samples=FLAGS.bootstrap_samples, alpha=FLAGS.alpha,
      seed=FLAGS.bootstrap_seed, out_dir=FLAGS.out_dir)


if __name__ == "__main__":
  cli.run(main, "jaxcxr.evaluate")

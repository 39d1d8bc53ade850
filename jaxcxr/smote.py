"""Feature-space SMOTE on a trained run: resample its training embeddings, train a new head, report, write back.

  python -m jaxcxr.export_embeddings --config=configs/demo.py:smote --workdir=/tmp/demo_smote
  python -m jaxcxr.smote --config=configs/demo.py:smote --workdir=/tmp/demo_smote
  python -m jaxcxr.evaluate --workdir=/tmp/demo_smote/smote      # the combined model, on images

Without --config, WORKDIR/config.json is used; override fields with --config.smote.method=adasyn etc.
What the stage does and writes: jaxcxr/head_stages.py (resampling.py, heads.py).
"""

from jaxcxr import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages(__spec__, __file__)  # First: glibc reads its tunables only at start.

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags
from ml_collections import config_flags

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr import head_stages
from jaxcxr import model_context

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's folder (holding embeddings/ from "
                    "jaxcxr.export_embeddings, checkpoints/ and config.json).")
config_flags.DEFINE_config_file(
    "config", None, "The run's config file and arm with its overrides (e.g. configs/demo.py:smote "
    "--config.smote.method=adasyn). Default: WORKDIR/config.json.", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  cli.start(argv)
  config_check.check(cli.run_config(FLAGS.config, FLAGS.workdir))
  ctx = model_context.ModelContext.from_workdir(FLAGS.workdir, FLAGS.config)
  if "smote" not in ctx.config:
    raise head_stages.SmoteError("The config has no smote block; pass --config (e.g. configs/demo.py:smote).")
  head_stages.run_smote(ctx)


if __name__ == "__main__":
  cli.run(main, "jaxcxr.smote")

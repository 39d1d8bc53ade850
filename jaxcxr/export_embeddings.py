"""Exports the pooled penultimate features of every train, val and test image from a run's checkpoint.

  python -m jaxcxr.export_embeddings --config=configs/demo.py:smote --workdir=/tmp/demo_smote
  python -m jaxcxr.export_embeddings --workdir=/tmp/hernia --checkpoint=latest --views=4

Without --config, the config the run was trained with (WORKDIR/config.json) is used. The checkpoint
(`best` by validation AUPRC of the target class, `latest`, or a step number) is restored and every image
is embedded in batches sharded over all devices. `--views=K` (default: the config's smote.views) adds K
augmented views of each training image that carries data.target (jaxcxr.data.augment), marked as views.
Output: WORKDIR/embeddings/{train,val,test}.npz and meta.json; each .npz loads with
np.load(path, allow_pickle=False) and holds features (N, D) float32, labels (N, 14) uint8, image_ids,
patient_ids, is_view and backbone_probs (the model's own probabilities). See jaxcxr/embeddings.py.
"""

from jaxcxr import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages(__spec__, __file__)  # First: glibc reads its tunables only at start.

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags
from ml_collections import config_flags

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr import embeddings
from jaxcxr import model_context

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's folder (holding checkpoints/ and config.json).")
config_flags.DEFINE_config_file(
    "config", None, "The run's config file and arm, with the overrides it was trained with "
    "(e.g. configs/demo.py:smote). Default: WORKDIR/config.json.", lock_config=True)
flags.DEFINE_string("checkpoint", None, "'best' (validation AUPRC of the target), 'latest' or a step "
                    "number. Default: the config's smote.checkpoint ('best').")
flags.DEFINE_integer("views", None, "Augmented views per training image with the target finding "
                     "(default: the config's smote.views; 0 = none).")
flags.DEFINE_string("out_dir", None, "Output folder (default: WORKDIR/embeddings).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  cli.start(argv)
  config_check.check(cli.run_config(FLAGS.config, FLAGS.workdir))
  ctx = model_context.ModelContext.from_workdir(FLAGS.workdir, FLAGS.config)
  smote_cfg = ctx.config.get("smote")
  checkpoint = FLAGS.checkpoint or (smote_cfg.checkpoint if smote_cfg else "best")
  views = FLAGS.views if FLAGS.views is not None else (smote_cfg.views if smote_cfg else 0)
  embeddings.export(ctx, checkpoint=checkpoint, views=views, out_dir=FLAGS.out_dir)


if __name__ == "__main__":
  cli.run(main, "jaxcxr.export_embeddings")

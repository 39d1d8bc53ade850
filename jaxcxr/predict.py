"""Scores new radiographs (PNG, JPEG, DICOM files or folders) with a trained run.

  python -m jaxcxr.predict --workdir=/tmp/jaxcxr_demo scans/ extra.dcm --out=predictions.csv
  python -m jaxcxr.predict --workdir=/tmp/jaxcxr_demo scans/ --heatmaps=maps/ --classes=Hernia,Pneumothorax

Each image goes through the decoding, grey conversion and resizing of `prepare` (DICOM: modality LUT, VOI
LUT or window, MONOCHROME1 inverted; see jaxcxr/data/readers.py). The CSV holds path, error,
prob_<class> and call_<class> (1 at or above the class's validation-chosen threshold) for the 14 classes;
predictions.json beside it records the checkpoint, the threshold rule and the thresholds. An unreadable
image keeps its row with the reason in `error`; the others are scored and the command exits 0.
--heatmaps=DIR writes an overlay PNG per image and class called positive (or each class of --classes).
"""

from absl import flags

from jaxcxr import cli
from jaxcxr import heatmaps
from jaxcxr import prediction

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's folder (holding checkpoints/ and config.json).")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
flags.DEFINE_string("out", "predictions.csv", "The CSV to write (its sidecar JSON goes beside it).")
flags.DEFINE_string("heatmaps", "", "Folder for overlay PNGs (none if empty).")
flags.DEFINE_string("classes", "", "Comma-separated classes to draw heatmaps for (default: those called positive).")
flags.DEFINE_enum("method", "gradcam", heatmaps.METHODS, "Heatmap method (see jaxcxr/heatmaps.py).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  cli.setup_logging()
  prediction.run(FLAGS.workdir, argv[1:], checkpoint=FLAGS.checkpoint, out=FLAGS.out, heatmaps_dir=FLAGS.heatmaps,
                 classes=prediction.parse_classes(FLAGS.classes), method=FLAGS.method)


if __name__ == "__main__":
  cli.run(main, "jaxcxr.predict")

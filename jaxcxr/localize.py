"""Scores a trained run's heatmaps against expert boxes, beside a random map and a centre prior.

  python -m jaxcxr.localize --workdir=/tmp/jaxcxr_demo                      # the phantom's own boxes
  python -m jaxcxr.localize --workdir=/runs/nih --boxes=/data/nih/BBox_List_2017.csv --method=smoothgrad

For every test image with boxes, each boxed finding's heatmap is scored by the pointing game, T(IoBB)
accuracy at 0.1, 0.25 and 0.5 and mean IoU, per finding with 95% patient-bootstrap intervals (see
jaxcxr/localization.py). Writes WORKDIR/localize/localize.json, localize.md and localize_overlays.png.
"""

from absl import flags

from jaxcxr import cli
from jaxcxr import heatmaps
from jaxcxr import localization

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run's folder (holding checkpoints/ and config.json).")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
flags.DEFINE_string("boxes", "", "Box file in NIH's BBox_List_2017.csv format (default: the data folder's).")
flags.DEFINE_float("box_image_size", 0, "Pixel grid of the box coordinates (default: 1024 for NIH, the "
                   "stored image size for the phantom).")
flags.DEFINE_enum("method", "gradcam", heatmaps.METHODS, "Heatmap method (see jaxcxr/heatmaps.py).")
flags.DEFINE_string("split", "test", "The split whose boxed images are scored.")
flags.DEFINE_float("map_threshold", localization.MAP_THRESHOLD,
                   "Fraction of each map's range at which it is cut into boxes for T(IoBB) and IoU.")
flags.DEFINE_integer("bootstrap_samples", 1000, "Patient-bootstrap samples for the intervals.")
flags.DEFINE_integer("seed", 0, "Seed of the bootstrap, the random-map control and SmoothGrad's noise.")
flags.DEFINE_string("out_dir", "", "Output folder (default: WORKDIR/localize).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  cli.start(argv)
  report = localization.run(FLAGS.workdir, checkpoint=FLAGS.checkpoint, box_file=FLAGS.boxes,
                            box_image_size=FLAGS.box_image_size, method=FLAGS.method, split_name=FLAGS.split,
                            map_threshold=FLAGS.map_threshold, num_samples=FLAGS.bootstrap_samples,
                            seed=FLAGS.seed, out_dir=FLAGS.out_dir)
  print(f"Pointing game ({FLAGS.method}, checkpoint step {report['step']}, 95% patient-bootstrap intervals; "
        "T(IoBB) and IoU in localize.md):")
  print(localization.metric_table(report, "pointing_game"))


if __name__ == "__main__":
  cli.run(main, "jaxcxr.localize")

"""Writes the built-in synthetic ("phantom") chest X-ray dataset in the NIH ChestX-ray14 layout.

  python -m jaxcxr.phantom --out /tmp/phantom --num_images 20000 --image_size 64 --hernia_prevalence 0.01

The folder can then be used like a real NIH download (data.source='nih', data.dir=/tmp/phantom).
"""

from absl import app
from absl import flags

from jaxcxr import cli
from jaxcxr.data import phantom
from jaxcxr.data.nih import CLASSES

_OUT = flags.DEFINE_string(
    "out", None, "Folder to write: Data_Entry_2017_v2020.csv, images/, train_val_list.txt, test_list.txt and "
    "phantom.json. Created if needed; an earlier phantom run there is replaced.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "Number of images (studies) to generate.", lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Side of the square 8-bit grey PNGs, in pixels.",
                                   lower_bound=16)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives byte-identical files.", lower_bound=0)
_LABEL_NOISE = flags.DEFINE_float(
    "label_noise", 1.0, "Scale of the per-finding label noise rates (jaxcxr/data/phantom.py LABEL_NOISE): 1 "
    "writes labels with the documented rates of missed and spurious findings, 0 writes the painted labels. "
    f"The painted labels always go to {phantom.CLEAN_LABEL_FILE}.", lower_bound=0.0, upper_bound=4.0)
_HERNIA_PREVALENCE = flags.DEFINE_float(
    "hernia_prevalence", None, "Per-image prevalence of Hernia (default: NIH's "
    f"{phantom.DEFAULT_PREVALENCE['Hernia']}). The other classes keep their NIH prevalences.",
    lower_bound=0.0, upper_bound=0.99)
_WORKERS = flags.DEFINE_integer("workers", None, "Processes to render with (default: one per CPU). The output "
                                "does not depend on it.", lower_bound=1)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")

flags.mark_flag_as_required("out")


def format_summary(summary):
  """A readable table of a `phantom.generate` summary: counts, then positives and prevalence per class."""
  n = summary["num_images"]
  target = summary["params"]["prevalence"]
  lines = [
      f"Phantom dataset in {summary['out_dir']}",
      f"  images:   {n}  ({summary['num_train_val']} train_val, {summary['num_test']} test)",
      f"  patients: {summary['num_patients']}",
      f"  image size: {summary['params']['image_size']} px, seed {summary['params']['seed']}, "
      f"label noise {summary['params']['label_noise']}",
      "",
      f"  {'class':<20} {'positives':>9} {'prevalence':>10} {'target':>8}",
  ]
  for c in CLASSES:
    k = summary["positives"][c]
    lines.append(f"  {c:<20} {k:>9} {k / n:>10.2%} {target[c]:>8.2%}")
  k = summary["no_finding"]
  lines.append(f"  {'No Finding':<20} {k:>9} {k / n:>10.2%}")
  return "\n".join(lines)


def main(argv):
  cli.start(argv, logs=False)
  prevalence = None if _HERNIA_PREVALENCE.value is None else {"Hernia": _HERNIA_PREVALENCE.value}
  summary = phantom.generate(_OUT.value, num_images=_NUM_IMAGES.value, image_size=_IMAGE_SIZE.value,
                             seed=_SEED.value, label_noise=_LABEL_NOISE.value, prevalence=prevalence,
                             progress=_PROGRESS.value, workers=_WORKERS.value)
  print(format_summary(summary))


if __name__ == "__main__":
  app.run(main)

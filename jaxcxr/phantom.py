"""Writes the built-in synthetic ("phantom") chest X-ray dataset in the NIH ChestX-ray14 layout.

  python -m jaxcxr.phantom --out /tmp/phantom --num_images 20000 --image_size 64 --hernia_prevalence 0.018

The folder can then be used like a real NIH download (data.source='nih', data.dir=/tmp/phantom). Beside the
label file (labels with noise, see --label_noise) it holds Data_Entry_clean.csv (the painted labels) and
BBox_List_2017.csv (a box around each painted finding of the test images, NIH's format).

With --difficulty, the no-learning controls of jaxcxr/difficulty.py (best fixed-window statistic, logistic
regression on 16 x 16 pixels; fitted on train_val, scored on test) are computed on the set in --out
(generated first with the other flags unless complete there) and written to --out/difficulty.json:

  python -m jaxcxr.phantom --difficulty --out /tmp/phantom --num_images 20000 --hernia_prevalence 0.018 \
      --findings Hernia,Pneumothorax
"""

import json
import os

from absl import flags

from jaxcxr import cli
from jaxcxr import errors
from jaxcxr import difficulty
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
_DIFFICULTY = flags.DEFINE_bool(
    "difficulty", False, "Compute the no-learning difficulty controls on the set in --out (generating it "
    "first unless a complete set with these parameters is there) and write --out/difficulty.json.")
_GRID = flags.DEFINE_string(
    "grid", None, "Also write a PNG grid of test images of the set in --out, one row per boxed finding, each "
    "finding drawn with its ground-truth box, upscaled 4x (for the README). Reuses a complete set in --out.")
_FINDINGS = flags.DEFINE_list("findings", None, "With --difficulty: the findings to score (default: all 14).")

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
      f"  {'class':<20} {'positives':>9} {'prevalence':>10} {'target':>8} {'painted':>8} {'pos->neg':>8} "
      f"{'neg->pos':>8}",
  ]
  for c in CLASSES:
    k = summary["positives"][c]
    lines.append(f"  {c:<20} {k:>9} {k / n:>10.2%} {target[c]:>8.2%} {summary['positives_in_images'][c]:>8} "
                 f"{summary['written_negative'][c]:>8} {summary['written_positive'][c]:>8}")
  k = summary["no_finding"]
  lines.append(f"  {'No Finding':<20} {k:>9} {k / n:>10.2%}")
  lines.append("  positives: as written in the label file (with label noise); painted: shown in the images "
               f"({phantom.CLEAN_LABEL_FILE}); {summary['boxes']} boxes of test findings in {phantom.BBOX_FILE}.")
  return "\n".join(lines)


def format_difficulty(results):
  """A readable table of `difficulty.controls` results: test AUROC of each control per finding."""
  lines = [f"  {'finding':<20} {'test pos':>8} {'window':>7} {'logreg':>7} {'window*':>8} {'logreg*':>8}"]
  f = lambda v: "   n/a" if v is None else f"{v:.3f}"
  for name, r in results.items():
    lines.append(f"  {name:<20} {r['test_positives']:>8} {f(r['window_auroc']):>7} {f(r['logreg_auroc']):>7} "
                 f"{f(r.get('window_auroc_clean')):>8} {f(r.get('logreg_auroc_clean')):>8}")
  lines.append("  test AUROC against the written labels; * against the painted (clean) labels.")
  return "\n".join(lines)


def write_grid(data_dir, path, *, per_row=6, scale=4):
  """Writes a PNG: per finding of phantom.BOXED, `per_row` test images painted with it, its box in red."""
  import csv  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  boxes = {}
  with open(os.path.join(data_dir, phantom.BBOX_FILE), newline="", encoding="utf-8") as f:
    for row in list(csv.reader(f))[1:]:
      boxes.setdefault(row[1], []).append((row[0], tuple(int(float(v)) for v in row[2:6])))
  rows = []
  for finding in phantom.BOXED:
    tiles = []
    for name, (x, y, w, h) in boxes.get(finding, [])[:per_row]:
      with Image.open(os.path.join(data_dir, phantom.IMAGES, name)) as im:
        im = im.convert("RGB")
      im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
      ImageDraw.Draw(im).rectangle([x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1],
                                   outline=(255, 40, 40))
      ImageDraw.Draw(im).text((3, 2), finding, fill=(255, 255, 0))
      tiles.append(np.asarray(im))
    if tiles:
      tiles += [np.zeros_like(tiles[0])] * (per_row - len(tiles))
      rows.append(np.concatenate(tiles, 1))
  Image.fromarray(np.concatenate(rows, 0)).save(path)


def main(argv):
  cli.start(argv, logs=False)
  prevalence = None if _HERNIA_PREVALENCE.value is None else {"Hernia": _HERNIA_PREVALENCE.value}
  params = dict(num_images=_NUM_IMAGES.value, image_size=_IMAGE_SIZE.value, seed=_SEED.value,
                label_noise=_LABEL_NOISE.value, prevalence=prevalence, progress=_PROGRESS.value,
                workers=_WORKERS.value)
  if _FINDINGS.value and not _DIFFICULTY.value:
    raise errors.ConfigError("--findings applies only with --difficulty.")
  unknown = [f for f in _FINDINGS.value or () if f not in CLASSES]
  if unknown:
    raise errors.ConfigError(f"--findings: unknown finding {unknown[0]!r}; known: {', '.join(CLASSES)}.")
  if _DIFFICULTY.value or _GRID.value:  # Reuse a complete set.
    try:
      summary = phantom.ensure(_OUT.value, **params)
    except ValueError as e:
      raise errors.UserError(str(e)) from None
  else:
    summary = phantom.generate(_OUT.value, **params)
  print(format_summary(summary))
  if _GRID.value:
    write_grid(summary["out_dir"], _GRID.value)
    print(f"Grid of boxed findings written to {_GRID.value}")
  if _DIFFICULTY.value:
    results = difficulty.controls_for_folder(summary["out_dir"], findings=_FINDINGS.value,
                                             clean_label_file=phantom.CLEAN_LABEL_FILE)
    path = os.path.join(summary["out_dir"], difficulty.RESULTS_FILE)
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"params": summary["params"], "controls": results}, f, indent=1)
    print("\nDifficulty controls (fitted on train_val, scored on test):")
    print(format_difficulty(results))
    print(f"Written to {path}")


if __name__ == "__main__":
  cli.run(main, "jaxcxr.phantom")

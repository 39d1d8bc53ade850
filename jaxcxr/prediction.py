"""Scoring new radiographs with a trained run: probabilities, calls at the validation thresholds, heatmaps.

  ctx = model_context.ModelContext.from_workdir(workdir)
  step, variables = ctx.restore("best")
  result = prediction.predict_files(ctx, variables, readers.find_inputs(paths))
  prediction.write_csv("predictions.csv", result)        # and predictions.json beside it
  prediction.write_heatmaps("heatmaps/", ctx, variables, result)

Images are read by jaxcxr.data.readers (PNG/JPEG through prepare's own decoder, DICOM to the same 8-bit
grey), so an image scores as it would in `jaxcxr.evaluate`. A file that cannot be read keeps its row with
the reason in the `error` column; the others are scored.
"""

import csv
import dataclasses
import json
import os
import re
from typing import List, Optional, Sequence

import numpy as np
import tqdm

from jaxcxr.data import nih
from jaxcxr.data import readers

READ_CHUNK = 1024  # Images read and scored per round: memory stays bounded for folders of any size.


@dataclasses.dataclass
class Predictions:
  """The outcome for N input files, in input order; rows with an error have NaN probabilities."""
  paths: List[str]
  errors: List[Optional[str]]
  probabilities: np.ndarray  # (N, 14) float32, NaN where errors[i] is set.
  thresholds: np.ndarray  # (14,) the validation-chosen thresholds the calls use.
  info: dict  # workdir, step, threshold rule, image size, ... (the sidecar JSON).
  images: Optional[np.ndarray] = None  # (N, S, S) uint8 when kept (for heatmaps); zeros for error rows.

  @property
  def calls(self) -> np.ndarray:
    """(N, 14) int: 1 where probability >= threshold, 0 below, -1 for rows with an error."""
    out = (self.probabilities >= self.thresholds[None, :]).astype(np.int64)
    out[np.isnan(self.probabilities).any(axis=1)] = -1
    return out


def parse_checkpoint(text: str):
  """'best', 'latest' or a step number (as int)."""
  text = str(text).strip()
  if re.fullmatch(r"\d+", text):
    return int(text)
  if text in ("best", "latest"):
    return text
  from jaxcxr import errors  # pylint: disable=g-import-not-at-top
  raise errors.UserError(f"--checkpoint must be 'best', 'latest' or a step number, got {text!r}.")


def parse_classes(text: str) -> List[str]:
  """A comma-separated list of class names (as in nih.CLASSES, 'Infiltrate' accepted) -> names."""
  from jaxcxr import errors  # pylint: disable=g-import-not-at-top
  out = []
  for part in (p for p in str(text).split(",") if p.strip()):
    name = nih.class_name(part)
    if name is None:
      raise errors.UserError(f"--classes: unknown class {part.strip()!r}; choose from {', '.join(nih.CLASSES)}.")
    out.append(name)
  return out


def validation_thresholds(ctx, variables) -> np.ndarray:
  """(14,) thresholds chosen on the run's validation split with config.train.threshold_rule, as the run's
  test report chose them."""
  return np.asarray(ctx.thresholds(variables), np.float64)


def predict_files(ctx, variables, paths: Sequence[str], *, thresholds=None, step=None, keep_images=False,
                  progress: bool = True) -> Predictions:
  """Reads and scores `paths` with `ctx` (a ModelContext) and `variables`.

  thresholds: (14,) operating thresholds; default `validation_thresholds(ctx, variables)`.
  keep_images: keep the images read (for `write_heatmaps`).
  """
  size = int(ctx.config.data.image_size)
  if thresholds is None:
    thresholds = validation_thresholds(ctx, variables)
  thresholds = np.asarray(thresholds, np.float64).reshape(len(nih.CLASSES))
  paths = list(paths)
  probs = np.full((len(paths), len(nih.CLASSES)), np.nan, np.float32)
  errors = [None] * len(paths)
  images = np.zeros((len(paths), size, size), np.uint8) if keep_images else None
  with tqdm.tqdm(total=len(paths), desc="Scoring images", unit="img", dynamic_ncols=True,
                 disable=not progress) as bar:
    for start in range(0, len(paths), READ_CHUNK):
      chunk = paths[start:start + READ_CHUNK]
      reads = readers.read_images(chunk, size)
      good = [i for i, r in enumerate(reads) if r.error is None]
      for i, r in enumerate(reads):
        errors[start + i] = r.error
      if good:
        batch = np.stack([reads[i].image for i in good])
        probs[[start + i for i in good]] = np.asarray(ctx.predict(variables, batch), np.float32)
        if keep_images:
          images[[start + i for i in good]] = batch
      bar.update(len(chunk))
  config = ctx.config
  info = {"workdir": getattr(ctx, "workdir", None), "checkpoint_step": step, "model": config.model.name,
          "image_size": size, "threshold_rule": config.train.threshold_rule,
          "thresholds": {c: float(t) for c, t in zip(nih.CLASSES, thresholds)},
          "images": len(paths), "scored": int(sum(e is None for e in errors)),
          "errors": int(sum(e is not None for e in errors)),
          "calls": "call_<class> is 1 where prob_<class> >= the class's threshold (chosen on the run's "
                   "validation split with threshold_rule), 0 below; empty for rows with an error.",
          "dicom_decoders": readers.dicom_decoders()}
  return Predictions(paths, errors, probs, thresholds, info, images)


def csv_header() -> List[str]:
  return (["path", "error"] + [f"prob_{c}" for c in nih.CLASSES] + [f"call_{c}" for c in nih.CLASSES])


def write_csv(path: str, result: Predictions) -> str:
  """Writes the CSV (path, error, prob_<class> x 14, call_<class> x 14) and `<path minus .csv>.json`
  with the thresholds and the rule that chose them; returns the JSON's path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  calls = result.calls
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(csv_header())
    for i, p in enumerate(result.paths):
      if result.errors[i] is not None:
        w.writerow([p, result.errors[i]] + [""] * (2 * len(nih.CLASSES)))
      else:
        w.writerow([p, ""] + [f"{v:.6g}" for v in result.probabilities[i]] + [int(c) for c in calls[i]])
  sidecar = os.path.splitext(path)[0] + ".json"
  with open(sidecar, "w") as f:
    json.dump({**result.info, "csv": os.path.abspath(path)}, f, indent=1)
  return sidecar


def _safe_stem(path: str) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"


def write_heatmaps(out_dir: str, ctx, variables, result: Predictions, *, classes: Sequence[str] = (),
                   method: str = "gradcam", progress: bool = True, preprocess=None) -> List[str]:
  """Overlay PNGs for each scored image and each class in `classes` (default: the classes called
  positive); named `<row>_<file stem>_<class>.png`. Needs `predict_files(..., keep_images=True)`.
  `preprocess`: the model's input normalisation (default model_context.normalize)."""
  from jaxcxr import heatmaps  # pylint: disable=g-import-not-at-top
  if preprocess is None:
    from jaxcxr import model_context  # pylint: disable=g-import-not-at-top
    preprocess = model_context.normalize
  if result.images is None:
    raise ValueError("write_heatmaps needs the images: call predict_files(..., keep_images=True).")
  calls = result.calls
  wanted = [nih.CLASSES.index(c) for c in classes]
  pairs = []
  for i in range(len(result.paths)):
    if result.errors[i] is None:
      pairs += [(i, c) for c in (wanted or np.flatnonzero(calls[i] == 1).tolist())]
  if not pairs:
    return []
  os.makedirs(out_dir, exist_ok=True)
  rows = np.asarray([p[0] for p in pairs])
  cls = np.asarray([p[1] for p in pairs], np.int32)
  fn = heatmaps.make_heatmap_fn(ctx.model, method=method, preprocess=preprocess,
                                data_sharding=ctx.data_sharding, replicated=ctx.replicated)
  written = []
  with tqdm.tqdm(total=len(pairs), desc=f"{method} heatmaps", unit="map", dynamic_ncols=True,
                 disable=not progress) as bar:
    for start in range(0, len(pairs), READ_CHUNK):
      sl = slice(start, start + READ_CHUNK)
      maps = heatmaps.compute(fn, variables, result.images[rows[sl]], cls[sl], batch_size=ctx.eval_batch_size,
                              put=ctx.global_batch, progress=bar.update)
      for (i, c), m in zip(pairs[sl], maps):
        name = nih.CLASSES[c]
        title = heatmaps.title(name, float(result.probabilities[i, c]),
                               extra=f" (threshold {result.thresholds[c]:.3f}, {method})")
        path = os.path.join(out_dir, f"{i:05d}_{_safe_stem(result.paths[i])}_{name}.png")
        written.append(heatmaps.save_overlay(path, result.images[i], m, title_text=title))
  return written


def run(workdir: str, inputs: Sequence[str], *, checkpoint="best", out: str = "predictions.csv",
        heatmaps_dir: str = "", classes: Sequence[str] = (), method: str = "gradcam", progress: bool = True):
  """`python -m jaxcxr.predict`: restores WORKDIR's checkpoint, scores `inputs` (files or folders), writes
  the CSV and its sidecar JSON (and overlays under `heatmaps_dir`); returns the Predictions."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from jaxcxr import model_context  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jaxcxr import errors  # pylint: disable=g-import-not-at-top
  if heatmaps_dir and jax.process_count() > 1:
    raise errors.UserError("--heatmaps runs in a single process; run predict without a multi-process launcher.")
  paths = readers.find_inputs(list(inputs))
  ctx = model_context.ModelContext.from_workdir(workdir)
  step, variables = ctx.restore(parse_checkpoint(checkpoint))
  result = predict_files(ctx, variables, paths, step=step, keep_images=bool(heatmaps_dir), progress=progress)
  if jax.process_index() != 0:  # Every process scores (the batches span all devices); one writes.
    return result
  sidecar = write_csv(out, result)
  logging.info("Scored %d of %d images with %s at step %d; %d could not be read (see the error column). "
               "Wrote %s and %s.", result.info["scored"], len(paths), workdir, step, result.info["errors"], out,
               sidecar)
  if heatmaps_dir:
    written = write_heatmaps(heatmaps_dir, ctx, variables, result, classes=classes, method=method,
                             progress=progress)
    logging.info("Wrote %d %s overlays to %s.", len(written), method, heatmaps_dir)
  return result

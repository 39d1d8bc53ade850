"""Scoring heatmaps against expert boxes: pointing game, T(IoBB) accuracy, IoU, with patient-bootstrap
intervals and two controls (a random map and a centre prior).

The unit is an (image, finding) pair that has boxes (NIH: one box each). For each pair's map:

- pointing game: 1 if the map's maximum (its first maximal pixel, row-major) has its centre inside one of
  the pair's boxes, else 0;
- T(IoBB) >= t, for t in IOBB_THRESHOLDS: the map is scaled to [0, 1] by its minimum and maximum and
  thresholded at `map_threshold` (default 0.5: pixels at least halfway from the map's minimum to its
  maximum); each 8-connected region of it gives a box (its bounding rectangle), as Wang et al. 2017 turn
  heatmaps into boxes; IoBB = area(expert box and predicted box) / area(predicted box), and the pair
  counts as found at t if its best IoBB over all predicted and expert boxes is >= t. (Wang et al. threshold
  their [0, 255] map at 60 and 180, i.e. 0.24 and 0.71; 0.5 sits between.)
- IoU: the best intersection over union between a predicted and an expert box; the mean over pairs.

Each is reported per finding with a 95% percentile interval from resampling patients (all their pairs
together), beside the same scores of two controls that ignore the image: `random_maps` (white noise
smoothed to the coarseness of a heatmap) and `centre_prior_map` (a Gaussian at the image centre). A map
beats a control when the lower end of its interval lies above the control's upper end.
"""

import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import ndimage

from jaxcxr import bootstrap
from jaxcxr import errors

IOBB_THRESHOLDS = (0.1, 0.25, 0.5)
MAP_THRESHOLD = 0.5
METRICS = ("pointing_game",) + tuple(f"iobb_{t:g}" for t in IOBB_THRESHOLDS) + ("mean_iou",)
METRIC_TITLES = {"pointing_game": "pointing game", "mean_iou": "mean IoU",
                 **{f"iobb_{t:g}": f"T(IoBB)>={t:g}" for t in IOBB_THRESHOLDS}}
CONTROLS = ("random", "centre")


# ----------------------------------------------------------------------------------------------------------
# Boxes and maps, one pair at a time.
# ----------------------------------------------------------------------------------------------------------


def box_mask(xywh, shape):
  """(H, W) bool: pixels whose centre (c + 0.5, r + 0.5) lies in the box (x, y, w, h)."""
  x, y, w, h = (float(v) for v in xywh)
  rows = np.arange(shape[0]) + 0.5
  cols = np.arange(shape[1]) + 0.5
  return ((rows >= y) & (rows <= y + h))[:, None] & ((cols >= x) & (cols <= x + w))[None, :]


def pointing_hit(heatmap, boxes) -> float:
  """1.0 if the map's first maximal pixel has its centre inside one of `boxes` ((k, 4) xywh), else 0.0."""
  heatmap = np.asarray(heatmap)
  r, c = np.unravel_index(np.argmax(heatmap), heatmap.shape)
  py, px = r + 0.5, c + 0.5
  return float(any(x <= px <= x + w and y <= py <= y + h for x, y, w, h in np.asarray(boxes).reshape(-1, 4)))


def predicted_boxes(heatmap, *, map_threshold: float = MAP_THRESHOLD) -> np.ndarray:
  """(n, 4) xywh: the bounding rectangles of the 8-connected regions where the map, scaled to [0, 1] by
  its minimum and maximum, is >= map_threshold. A constant map gives one box, the whole image."""
  heatmap = np.asarray(heatmap, np.float64)
  lo, hi = heatmap.min(), heatmap.max()
  scaled = (heatmap - lo) / (hi - lo) if hi > lo else np.ones_like(heatmap)
  labels, _ = ndimage.label(scaled >= map_threshold, structure=np.ones((3, 3), bool))
  out = [(s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start)
         for s in ndimage.find_objects(labels) if s is not None]
  return np.asarray(out, np.float64).reshape(-1, 4)


def _intersection(a, b):
  """(len(a), len(b)) intersection areas of xywh boxes."""
  a, b = np.asarray(a, np.float64)[:, None, :], np.asarray(b, np.float64)[None, :, :]
  w = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
  h = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
  return np.clip(w, 0, None) * np.clip(h, 0, None)


def iobb(expert, predicted) -> np.ndarray:
  """(len(expert), len(predicted)): area of the overlap / area of the predicted box."""
  area = np.asarray(predicted, np.float64)[:, 2] * np.asarray(predicted, np.float64)[:, 3]
  return _intersection(expert, predicted) / area[None, :]


def iou(expert, predicted) -> np.ndarray:
  """(len(expert), len(predicted)) intersection over union."""
  expert, predicted = np.asarray(expert, np.float64), np.asarray(predicted, np.float64)
  inter = _intersection(expert, predicted)
  union = (expert[:, 2] * expert[:, 3])[:, None] + (predicted[:, 2] * predicted[:, 3])[None, :] - inter
  return inter / union


def score_pair(heatmap, boxes, *, map_threshold: float = MAP_THRESHOLD) -> Dict[str, float]:
  """{metric: value} for one map and its pair's expert boxes ((k, 4) xywh in the map's pixels)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  pred = predicted_boxes(heatmap, map_threshold=map_threshold)
  best_iobb = float(iobb(boxes, pred).max()) if len(pred) else 0.0
  out = {"pointing_game": pointing_hit(heatmap, boxes)}
  out.update({f"iobb_{t:g}": float(best_iobb >= t) for t in IOBB_THRESHOLDS})
  out["mean_iou"] = float(iou(boxes, pred).max()) if len(pred) else 0.0
  return out


def score_maps(maps, boxes: Sequence, *, map_threshold: float = MAP_THRESHOLD) -> Dict[str, np.ndarray]:
  """{metric: (N,) per-pair values} for maps (N, H, W) and each pair's (k, 4) boxes."""
  rows = [score_pair(m, b, map_threshold=map_threshold) for m, b in zip(maps, boxes)]
  return {k: np.asarray([r[k] for r in rows], np.float64) for k in METRICS}


# ----------------------------------------------------------------------------------------------------------
# Controls.
# ----------------------------------------------------------------------------------------------------------


def random_maps(n: int, size: int, *, seed: int = 0, smoothing: float = 1 / 16) -> np.ndarray:
  """(n, size, size) white noise smoothed by a Gaussian of std `smoothing` * size: random blobs about as
  coarse as an upsampled Grad-CAM map, drawn independently of the image."""
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal((n, size, size))
  sigma = max(smoothing * size, 0.0)
  return np.stack([ndimage.gaussian_filter(m, sigma) for m in noise]) if sigma > 0 else noise


def centre_prior_map(size: int, *, spread: float = 0.25) -> np.ndarray:
  """(size, size) Gaussian centred on the image centre, std `spread` * size: 'the finding is central'."""
  centre = size / 2.0
  coords = np.arange(size) + 0.5 - centre
  d2 = coords[:, None] ** 2 + coords[None, :] ** 2
  return np.exp(-d2 / (2 * (spread * size) ** 2))


# ----------------------------------------------------------------------------------------------------------
# Intervals and the report.
# ----------------------------------------------------------------------------------------------------------


def bootstrap_mean(values, patients, *, num_samples: int = 1000, seed: int = 0, alpha: float = 0.05):
  """(mean, (low, high) or None): the mean of per-pair values and its patient-bootstrap percentile interval
  (each resample draws patients with replacement, all their pairs with them)."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return None, None
  inverse, num_groups = bootstrap.group_index(patients)
  sums = np.bincount(inverse, weights=values, minlength=num_groups)
  counts = np.bincount(inverse, minlength=num_groups).astype(np.float64)
  means = [(c @ sums) / (c @ counts)
           for c in bootstrap.resample_counts(num_groups, num_samples=num_samples, seed=seed)]
  means = np.concatenate(means) if means else np.zeros(0)
  return float(values.mean()), bootstrap.percentile_interval(means, alpha=alpha)


def _summary(scores, idx, patients, *, num_samples, seed):
  out = {}
  for k in METRICS:
    value, ci = bootstrap_mean(scores[k][idx], patients[idx], num_samples=num_samples, seed=seed)
    out[k] = {"value": value, "ci": None if ci is None else [ci[0], ci[1]]}
  return out


def beats(model, control) -> Optional[bool]:
  """True when the model's interval lies wholly above the control's (None if either is missing)."""
  if model["ci"] is None or control["ci"] is None:
    return None
  return bool(model["ci"][0] > control["ci"][1])


def summarize(scores: Dict[str, Dict[str, np.ndarray]], *, findings, patients, num_samples: int = 1000,
              seed: int = 0) -> dict:
  """The per-finding table: scores = {'model': {metric: (N,)}, 'random': ..., 'centre': ...} over the same
  N pairs, findings (N,) and patients (N,). Returns {finding (and 'All'): {'pairs', 'patients', 'model',
  'random', 'centre', 'beats_controls': {metric: bool or None}}}."""
  findings, patients = np.asarray(findings), np.asarray(patients)
  out = {}
  groups = [(f, findings == f) for f in sorted(set(findings.tolist()))]
  if len(groups) > 1:
    groups.append(("All", np.ones(len(findings), bool)))
  for name, idx in groups:
    row = {"pairs": int(idx.sum()), "patients": int(len(np.unique(patients[idx])))}
    for source, s in scores.items():
      row[source] = _summary(s, idx, patients, num_samples=num_samples, seed=seed)
    row["beats_controls"] = {
        k: (None if any(beats(row["model"][k], row[c][k]) is None for c in CONTROLS)
            else all(beats(row["model"][k], row[c][k]) for c in CONTROLS)) for k in METRICS}
    out[name] = row
  return out


def _cell(entry):
  if entry["value"] is None:
    return "–"
  ci = "" if entry["ci"] is None else f" [{entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}]"
  return f"{entry['value']:.3f}{ci}"


def metric_table(report: dict, metric: str = "pointing_game") -> str:
  """One metric as a markdown table: finding, pairs, model, random map, centre prior, beats both."""
  lines = ["| finding | pairs | model | random map | centre prior | beats both |", "|---|---|---|---|---|---|"]
  for name, row in report["findings"].items():
    b = row["beats_controls"][metric]
    lines.append(f"| {name} | {row['pairs']} | {_cell(row['model'][metric])} | {_cell(row['random'][metric])} | "
                 f"{_cell(row['centre'][metric])} | {'–' if b is None else ('yes' if b else 'no')} |")
  return "\n".join(lines)


def markdown(report: dict) -> str:
  """localize.md: one table per metric: finding, pairs, model, random map, centre prior, beats both."""
  lines = [f"# Localisation against expert boxes ({report.get('method', 'heatmap')})", "",
           f"Checkpoint step {report.get('step', '?')}; boxes from {report.get('box_file', '?')}; "
           f"{report.get('pairs', 0)} (image, finding) pairs on {report.get('images', 0)} images. Maps "
           f"thresholded at {report.get('map_threshold', MAP_THRESHOLD)} of their range for T(IoBB) and IoU. "
           "Intervals: 95% patient bootstrap. 'beats both': the model's interval lies above both controls'.", ""]
  for k in METRICS:
    lines += [f"## {METRIC_TITLES[k]}", "", metric_table(report, k), ""]
  if report.get("skipped"):
    lines.append(f"Boxes not scored: {json.dumps(report['skipped'])}.")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# A whole run: a model context, its checkpoint and the boxes.
# ----------------------------------------------------------------------------------------------------------


def match_pairs(boxes, split):
  """(pairs, skipped): pairs = [(row in split, finding, (k, 4) boxes)] for boxed images in `split`
  (split.meta.names); skipped counts boxes whose image is not there."""
  where = {n: i for i, n in enumerate(split.meta.names.tolist())}
  pairs, missing = [], 0
  for (name, finding), xywh in boxes.pairs().items():
    if name in where:
      pairs.append((where[name], finding, xywh))
    else:
      missing += len(xywh)
  return pairs, {"image_not_in_split": missing} if missing else {}


def localize(ctx, variables, boxes, *, split_name: str = "test", method: str = "gradcam",
             map_threshold: float = MAP_THRESHOLD, num_samples: int = 1000, seed: int = 0,
             progress: bool = True, preprocess=None) -> dict:
  """Heatmaps of every boxed (image, finding) pair of `split_name`, scored with controls.

  `ctx` is a ModelContext (model, splits, predict, global_batch, eval_batch_size, data_sharding,
  replicated); `boxes` a data.boxes.Boxes in the prepared images' pixels (Boxes.rescaled); `preprocess`
  the model's input normalisation (default model_context.normalize). Returns
  (report, extras) with extras = {'images', 'maps', 'probabilities', 'pairs'} for the overlay grid.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  from jaxcxr import heatmaps  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import nih  # pylint: disable=g-import-not-at-top
  if preprocess is None:
    from jaxcxr import model_context  # pylint: disable=g-import-not-at-top
    preprocess = model_context.normalize
  split = ctx.splits[split_name]
  pairs, skipped = match_pairs(boxes, split)
  if not pairs:
    raise errors.UserError(
        f"None of the {len(boxes)} boxes is on an image of the {split_name} split ({len(split)} images); "
        "are the box file and the run's data the same dataset?")
  rows = np.asarray([p[0] for p in pairs], np.int64)
  classes = np.asarray([nih.CLASSES.index(p[1]) for p in pairs], np.int32)
  images = np.asarray(split.images[split.rows[rows]])
  size = images.shape[1]
  fn = heatmaps.make_heatmap_fn(ctx.model, method=method, preprocess=preprocess,
                                data_sharding=ctx.data_sharding, replicated=ctx.replicated)
  with tqdm.tqdm(total=len(pairs), desc=f"{method} maps", unit="map", disable=not progress) as bar:
    maps = heatmaps.compute(fn, variables, images, classes, batch_size=ctx.eval_batch_size, seed=seed,
                            put=ctx.global_batch, progress=bar.update)
  probabilities = ctx.predict(variables, images)[np.arange(len(pairs)), classes]
  expert = [p[2] for p in pairs]
  scores = {"model": score_maps(maps, expert, map_threshold=map_threshold),
            "random": score_maps(random_maps(len(pairs), size, seed=seed), expert, map_threshold=map_threshold),
            "centre": score_maps(np.broadcast_to(centre_prior_map(size), (len(pairs), size, size)), expert,
                                 map_threshold=map_threshold)}
  findings = np.asarray([p[1] for p in pairs])
  patients = np.asarray(split.meta.patients)[rows]
  report = {"method": method, "split": split_name, "map_threshold": map_threshold,
            "iobb_thresholds": list(IOBB_THRESHOLDS), "pairs": len(pairs), "images": int(len(np.unique(rows))),
            "patients": int(len(np.unique(patients))), "image_size": size, "skipped": skipped,
            "bootstrap_samples": num_samples,
            "findings": summarize(scores, findings=findings, patients=patients, num_samples=num_samples,
                                  seed=seed)}
  extras = {"images": images, "maps": maps, "probabilities": probabilities, "findings": findings,
            "names": split.meta.names[rows], "boxes": expert}
  return report, extras


def write(report: dict, extras: dict, out_dir: str, *, per_finding: int = 2) -> Dict[str, str]:
  """Writes localize.json, localize.md and localize_overlays.png (up to `per_finding` pairs of each
  finding, boxes drawn) into `out_dir`; returns their paths."""
  from jaxcxr import heatmaps  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, "localize.json"), "md": os.path.join(out_dir, "localize.md"),
           "png": os.path.join(out_dir, "localize_overlays.png")}
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(markdown(report))
  panels, taken = [], {}
  for i, finding in enumerate(extras["findings"].tolist()):
    if taken.get(finding, 0) < per_finding:
      taken[finding] = taken.get(finding, 0) + 1
      panels.append(dict(image=extras["images"][i], heatmap=extras["maps"][i], boxes=extras["boxes"][i],
                         title_text=heatmaps.title(finding, float(extras["probabilities"][i]),
                                                   extra=f"\n{extras['names'][i]}")))
  heatmaps.save_grid(paths["png"], panels, ncols=4,
                     suptitle=f"{report['method']} maps (heat) and expert boxes (green)")
  return paths


def run(workdir: str, *, checkpoint="best", box_file: str = "", box_image_size: float = 0,
        method: str = "gradcam", split_name: str = "test", map_threshold: float = MAP_THRESHOLD,
        num_samples: int = 1000, seed: int = 0, out_dir: str = "", progress: bool = True) -> dict:
  """`python -m jaxcxr.localize`: restores WORKDIR's checkpoint, scores its heatmaps against the boxes
  and writes localize.json, localize.md and localize_overlays.png to `out_dir` (default WORKDIR/localize).

  box_file: default the data folder's BBox_List_2017.csv(.gz). box_image_size: the pixel grid of the box
  coordinates; default 1024 (NIH's PNGs) for data.source 'nih', data.image_size for the phantom (whose
  boxes are in its stored images' pixels).
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  from jaxcxr import model_context  # pylint: disable=g-import-not-at-top
  from jaxcxr import prediction  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import boxes as boxes_lib  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import datasets  # pylint: disable=g-import-not-at-top
  ctx = model_context.ModelContext.from_workdir(workdir)
  config = ctx.config
  if not box_file:
    box_file = boxes_lib.find_box_file(datasets.data_dir(config))
    if box_file is None:
      raise errors.UserError(f"No {boxes_lib.NIH_BOX_FILE}(.gz) in {datasets.data_dir(config)}; pass --boxes=FILE "
                             "(NIH's BBox_List_2017.csv, or the phantom's box file).")
  if not box_image_size:
    box_image_size = boxes_lib.NIH_BOX_IMAGE_SIZE if config.data.source == "nih" else config.data.image_size
  boxes = boxes_lib.read_boxes(box_file, image_size=box_image_size).rescaled(config.data.image_size)
  step, variables = ctx.restore(prediction.parse_checkpoint(checkpoint))
  report, extras = localize(ctx, variables, boxes, split_name=split_name, method=method,
                            map_threshold=map_threshold, num_samples=num_samples, seed=seed, progress=progress)
  report.update({"step": int(step), "box_file": os.path.abspath(box_file), "box_image_size": float(box_image_size),
                 "workdir": str(ctx.workdir)})
  paths = write(report, extras, out_dir or os.path.join(str(ctx.workdir), "localize"))
  logging.info("Localisation of %d (image, finding) pairs written to %s, %s and %s.", report["pairs"],
               paths["json"], paths["md"], paths["png"])
  return report

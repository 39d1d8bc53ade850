"""One-vs-rest resampling of training embeddings with imbalanced-learn (SMOTE, Borderline-SMOTE, ADASYN).

`mlsmote` (Charte et al. 2015, jaxcxr/mlsmote.py) instead handles every minority label in one multi-label
pass. For the others: imbalanced-learn rejects multi-label targets, so for each label whose positives / negatives is below
`ratio`, the rows are resampled against that label's 0/1 column up to that ratio and the new positive rows
are kept ('random' and 'smote', which draw from the positives alone, are handed only the positives and
1,000 negatives with the same count to make: the same points, far less copying). A synthetic row's other
13 labels are copied from its nearest real positive of that label (its own label is 1): SMOTE's points lie
between two such neighbours, whose findings it most likely shares; setting the other labels to 0 would
teach the head that they are absent. A label with too few positives for `k_neighbors` is resampled with
k = positives - 1, by duplication when it has a single positive, and skipped when it has none; each case
is logged. Pure NumPy and scikit-learn: callers hand it the training rows only.
"""

import dataclasses
import functools

from absl import logging
import imblearn.over_sampling
import numpy as np
from sklearn.neighbors import NearestNeighbors
import tqdm

from jaxcxr import errors
from jaxcxr import mlsmote
from jaxcxr.data import nih

METHODS = ("none", "random", "smote", "borderline1", "borderline2", "adasyn", "mlsmote")


def make_resampler(method: str, *, k_neighbors: int, ratio, seed: int):
  """The imbalanced-learn over-sampler of `method` for one binary problem; `ratio` is its sampling_strategy:
  positives / negatives after resampling, or {1: number of positives after resampling}."""
  common = dict(sampling_strategy=ratio, random_state=seed)
  if method == "random":
    return imblearn.over_sampling.RandomOverSampler(**common)
  if method == "smote":
    return imblearn.over_sampling.SMOTE(k_neighbors=k_neighbors, **common)
  if method in ("borderline1", "borderline2"):
    return imblearn.over_sampling.BorderlineSMOTE(k_neighbors=k_neighbors, kind=f"borderline-{method[-1]}",
                                                  **common)
  if method == "adasyn":
    return imblearn.over_sampling.ADASYN(n_neighbors=k_neighbors, **common)
  raise errors.ConfigError(f"smote.method must be one of {', '.join(METHODS[1:])} here, got {method!r}.")


@dataclasses.dataclass
class Resampled:
  """Training rows after resampling: the real rows first, then the synthetic ones."""
  features: np.ndarray  # (N + S, D) float32
  labels: np.ndarray  # (N + S, C) uint8
  is_synthetic: np.ndarray  # (N + S,) bool
  origin_class: np.ndarray  # (N + S,) int: the label a synthetic row was made for; -1 for real rows.
  log: list  # One dict per class: what was done and why.


# Methods whose synthetic points depend only on the minority rows and the random state.
MINORITY_ONLY = ("random", "smote")


def resample(features, labels, *, method: str, k_neighbors: int, ratio: float, seed: int,
             classes=nih.CLASSES, progress: bool = False, negatives_kept: int = 1000) -> Resampled:
  """One-vs-rest resampling of training rows (see the module docstring).

  For 'random' and 'smote' (MINORITY_ONLY), whose new points are drawn from the positives alone,
  imbalanced-learn is handed a label's positives and only its first `negatives_kept` negatives (it needs
  both classes), with the number of positives the full rows would give (int(ratio * negatives) more) as
  an explicit sampling_strategy: the points are the same as with all N rows, without imbalanced-learn's
  two copies of the whole (N, D) array per label. 'borderline1', 'borderline2' and 'adasyn' look at the
  negatives around each positive and always get all the rows.

  Args:
    features: (N, D) float32 training features (and only those).
    labels: (N, C) 0/1 labels.
    method: one of METHODS ('none' returns the rows unchanged).
    k_neighbors: SMOTE's neighbours among a label's positives (ADASYN's n_neighbors).
    ratio: desired positives / negatives of each label after resampling.
    seed: random state of the resamplers (label c uses seed + c).
    classes: the C class names, for the log.
    progress: show a progress bar over the labels.
    negatives_kept: negatives handed to imbalanced-learn with the positives for MINORITY_ONLY methods (all
      rows when a label has no more negatives than this).

  Returns:
    Resampled, real rows first.
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels).astype(np.uint8)
  n, num_classes = labels.shape
  if method == "mlsmote":  # Multi-label, all minority labels in one pass (jaxcxr/mlsmote.py); no ratio.
    syn = mlsmote.generate(features, labels, k_neighbors=k_neighbors, seed=seed, classes=classes,
                           progress=progress)
    return Resampled(features=np.concatenate([features, syn.features]),
                     labels=np.concatenate([labels, syn.labels]),
                     is_synthetic=np.concatenate([np.zeros(n, bool), np.ones(len(syn.features), bool)]),
                     origin_class=np.concatenate([np.full(n, -1, np.int64), syn.origin_class]), log=syn.log)
  new_x, new_y, new_c, log = [], [], [], []
  for c in tqdm.trange(num_classes, desc=f"resample ({method})", disable=not progress, dynamic_ncols=True):
    y = labels[:, c].astype(np.int64)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    entry = {"class": classes[c], "n_pos": n_pos, "n_neg": n_neg, "method": method, "k_neighbors": k_neighbors,
             "synthetic": 0}
    log.append(entry)
    if method == "none":
      entry["note"] = "no resampling (smote.method='none')"
      continue
    if n_pos == 0 or n_neg == 0:
      entry["note"] = "skipped: no positives" if n_pos == 0 else "skipped: no negatives"
      logging.warning("SMOTE: %s has %d positives and %d negatives in training; skipped.", classes[c], n_pos,
                      n_neg)
      continue
    if int(ratio * n_neg - n_pos) <= 0:  # imbalanced-learn's count of points to add.
      entry["note"] = f"skipped: positives / negatives {n_pos / n_neg:.3f} already >= smote.ratio {ratio}"
      continue
    used, k = method, k_neighbors
    if method != "random" and n_pos <= k:
      if n_pos >= 2:
        k = n_pos - 1
        note = (f"{n_pos} positives are too few for k_neighbors={k_neighbors}: {method} with "
                f"k_neighbors={k}")
      else:
        used = "random"
        note = f"1 positive is too few for {method}: random duplication instead"
      logging.warning("SMOTE: %s: %s.", classes[c], note)
      entry.update(note=note, method=used, k_neighbors=k)
    n_new = int(ratio * n_neg - n_pos)
    pick = functools.partial(_resample_label, features, y, k=k, ratio=ratio, n_new=n_new, seed=seed + c,
                             negatives_kept=negatives_kept)
    try:
      xs = pick(used)
    except (RuntimeError, ValueError) as e:
      if used not in ("adasyn", "borderline1", "borderline2"):
        raise
      # ADASYN refuses when no positive has a negative neighbour; then plain SMOTE generates the points.
      note = f"{used} failed ({e}); smote instead"
      logging.warning("SMOTE: %s: %s.", classes[c], note)
      used = "smote"
      entry.update(note=note, method=used)
      xs = pick(used)
    if len(xs) == 0:
      entry.setdefault("note", f"{used} generated no points")
      logging.warning("SMOTE: %s: %s.", classes[c], entry["note"])
      continue
    pos = np.flatnonzero(y == 1)
    # Other labels: copied from the nearest real positive of this label.
    nearest = NearestNeighbors(n_neighbors=1).fit(features[pos]).kneighbors(xs, return_distance=False)[:, 0]
    ys = labels[pos[nearest]].copy()
    ys[:, c] = 1
    new_x.append(xs)
    new_y.append(ys)
    new_c.append(np.full(len(xs), c, np.int64))
    entry["synthetic"] = int(len(xs))
    logging.info("SMOTE: %s: %d positives, %d negatives -> %d synthetic positives (%s).", classes[c], n_pos,
                 n_neg, len(xs), used)
  num_new = sum(len(x) for x in new_x)
  return Resampled(
      features=np.concatenate([features, *new_x]) if num_new else features,
      labels=np.concatenate([labels, *new_y]) if num_new else labels,
      is_synthetic=np.concatenate([np.zeros(n, bool), np.ones(num_new, bool)]),
      origin_class=np.concatenate([np.full(n, -1, np.int64), *new_c]),
      log=log)


def _resample_label(features, y, method, *, k, ratio, n_new, seed, negatives_kept):
  """The synthetic positives for the binary target `y`: from the positives and a few negatives for
  MINORITY_ONLY methods with more than `negatives_kept` negatives (see `resample`), else from all rows."""
  neg = np.flatnonzero(y == 0)
  if method not in MINORITY_ONLY or len(neg) <= negatives_kept:
    return fit_resample(method, features, y, k=k, ratio=ratio, seed=seed)
  # Sorted rows keep the positives in their order, so the neighbours and random draws are those of the
  # full-rows call; the explicit count replaces the ratio, which would be taken of the kept negatives.
  rows = np.sort(np.concatenate([np.flatnonzero(y == 1), neg[:negatives_kept]]))
  n_pos = len(rows) - negatives_kept
  return fit_resample(method, features[rows], y[rows], k=k, ratio={1: n_pos + n_new}, seed=seed)


def fit_resample(method, features, y, *, k, ratio, seed):
  """The synthetic positive rows the resampler adds for the binary target `y`."""
  x_res, y_res = make_resampler(method, k_neighbors=k, ratio=ratio, seed=seed).fit_resample(features, y)
  xs, ys = x_res[len(features):], y_res[len(features):]
  if not np.all(ys == 1):  # imbalanced-learn appends the new rows after the originals, all positive.
    raise RuntimeError(f"{method} returned rows that are not new positives.")
  return np.array(xs, np.float32)  # A copy: a view would keep the whole resampled array alive.

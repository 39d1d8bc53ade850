"""MLSMOTE (Charte et al. 2015): synthetic minority over-sampling for multi-label rows, in NumPy.

The one-vs-rest resamplers of jaxcxr.smote treat each label as its own binary problem and copy a synthetic
row's other labels from one neighbour. MLSMOTE works on the label sets themselves:

1. Minority labels. For each label l with n_l > 0 positives, its imbalance ratio is
   IRLbl(l) = max_j n_j / n_l (1 for the most frequent label); a label is a minority label when its
   IRLbl exceeds the mean IRLbl over the labels present. (A label without positives has no ratio and is
   left alone: there is nothing to interpolate.)
2. For every minority label l (all of them in one pass: the ratios are computed once, on the real rows)
   and every row i carrying l, the k nearest neighbours of i are found among the rows carrying l
   (Euclidean; the search covers that label's rows only, a block of queries at a time). One of them, j,
   is drawn at random, and the synthetic features are x_i + r (x_j - x_i) with one r ~ U[0, 1) per row,
   so each synthetic point lies on the segment from x_i to x_j (as in SMOTE; Charte et al. draw r per
   feature, which puts points anywhere in the box spanned by the two rows).
3. Labels by the ranking rule: a label is set on the synthetic row when it is carried by more than half
   of the k + 1 rows made of i and its k neighbours (a tie, exactly half, leaves it unset). Label l
   itself is carried by all of them, so it is always set.

A row carrying two minority labels seeds two synthetic rows, one per label. A label with fewer than
k + 1 rows uses k = rows - 1, and a label with a single row duplicates it (each case is noted in the log).
Nothing here looks at validation or test rows: callers pass the training rows only.
"""

import dataclasses
from typing import Optional, Sequence

from absl import logging
import numpy as np
from sklearn.neighbors import NearestNeighbors
import tqdm


@dataclasses.dataclass
class Synthetic:
  """The synthetic rows of one MLSMOTE pass, in the order of the minority labels that made them."""
  features: np.ndarray  # (S, D) float32
  labels: np.ndarray  # (S, C) uint8, by the ranking rule
  origin_class: np.ndarray  # (S,) int64: the minority label each row was made for
  sample: np.ndarray  # (S,) int64: the row i it starts from (an index into the rows given)
  neighbour: np.ndarray  # (S,) int64: the neighbour j it interpolates towards (i itself when duplicated)
  log: list  # One dict per label: counts, IRLbl, minority or not, k, synthetic rows, notes.


def imbalance_ratios(labels) -> tuple[np.ndarray, float]:
  """(IRLbl per label, mean IRLbl over the labels with positives); IRLbl is inf for a label without any."""
  counts = np.asarray(labels).sum(0).astype(np.float64)
  present = counts > 0
  if not present.any():
    return np.full(counts.shape, np.inf), float("nan")
  with np.errstate(divide="ignore"):
    irlbl = counts.max() / counts
  return irlbl, float(irlbl[present].mean())


def minority_labels(labels) -> np.ndarray:
  """Indices of the labels whose IRLbl exceeds the mean IRLbl (labels without positives excluded)."""
  irlbl, mean_ir = imbalance_ratios(labels)
  return np.flatnonzero(np.isfinite(irlbl) & (irlbl > mean_ir))


def neighbours_within(features, *, k: int, chunk: int = 2048) -> np.ndarray:
  """(n, k) indices of each row's k nearest other rows of `features` (n, D), Euclidean, `chunk` queries at a
  time (the distances held at once are chunk x n). Needs n > k."""
  n = len(features)
  index = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(features)
  out = np.empty((n, k), np.int64)
  for start in range(0, n, chunk):
    idx = index.kneighbors(features[start:start + chunk], return_distance=False)
    own = idx == np.arange(start, start + len(idx))[:, None]
    # A row is its own nearest neighbour, unless duplicates tie with it: then drop the farthest instead.
    own[~own.any(1), -1] = True
    out[start:start + len(idx)] = idx[~own].reshape(len(idx), k)
  return out


def ranking_labels(labels, sample_rows, neighbour_rows) -> np.ndarray:
  """The ranking rule: labels carried by more than half of each sample and its neighbours.

  Args:
    labels: (N, C) 0/1 labels.
    sample_rows: (S,) row of each sample.
    neighbour_rows: (S, k) rows of its k neighbours.

  Returns:
    (S, C) uint8.
  """
  labels = np.asarray(labels)
  votes = labels[sample_rows].astype(np.int64) + labels[neighbour_rows].astype(np.int64).sum(1)
  return (2 * votes > neighbour_rows.shape[1] + 1).astype(np.uint8)


def generate(features, labels, *, k_neighbors: int, seed: int, classes: Optional[Sequence[str]] = None,
             chunk: int = 2048, progress: bool = False) -> Synthetic:
  """One MLSMOTE pass over the training rows (see the module docstring).

  Args:
    features: (N, D) training features (and only those); used as float32.
    labels: (N, C) 0/1 training labels.
    k_neighbors: neighbours k among the rows carrying a minority label.
    seed: seed of the neighbour draws and interpolation factors.
    classes: the C label names, for the log (default: their indices).
    chunk: queries per neighbour-search block.
    progress: show a progress bar over the minority labels.

  Returns:
    Synthetic: the new rows and a log entry per label.
  """
  if k_neighbors < 1:
    raise ValueError(f"MLSMOTE needs k_neighbors >= 1, got {k_neighbors}.")
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels).astype(np.uint8)
  n, num_classes = labels.shape
  if len(features) != n:
    raise ValueError(f"features have {len(features)} rows, labels {n}.")
  classes = list(classes) if classes is not None else [str(c) for c in range(num_classes)]
  irlbl, mean_ir = imbalance_ratios(labels)
  minority = set(minority_labels(labels).tolist())
  counts = labels.sum(0).astype(np.int64)
  log = []
  for c in range(num_classes):
    entry = {"class": classes[c], "n_pos": int(counts[c]), "n_neg": int(n - counts[c]), "method": "mlsmote",
             "k_neighbors": k_neighbors, "synthetic": 0,
             "irlbl": float(irlbl[c]) if np.isfinite(irlbl[c]) else None, "mean_ir": mean_ir,
             "minority": c in minority}
    if c not in minority:
      entry["note"] = ("no positives" if counts[c] == 0 else
                       f"not a minority label: IRLbl {irlbl[c]:.2f} <= mean {mean_ir:.2f}")
    log.append(entry)

  rng = np.random.default_rng(seed)
  xs, ys, cs, samples, refs = [], [], [], [], []
  for c in tqdm.tqdm(sorted(minority), desc="MLSMOTE", disable=not progress, dynamic_ncols=True):
    entry = log[c]
    bag = np.flatnonzero(labels[:, c])
    k = min(k_neighbors, len(bag) - 1)
    if k == 0:
      entry.update(k_neighbors=0, note="1 row carries it: duplicated")
      nbrs = bag[:, None]
      ref = bag
      new_x = features[bag].copy()
    else:
      if k < k_neighbors:
        entry.update(k_neighbors=k, note=f"{len(bag)} rows are too few for k_neighbors={k_neighbors}: k={k}")
      nbrs = bag[neighbours_within(features[bag], k=k, chunk=chunk)]  # (n_bag, k) row indices
      ref = nbrs[np.arange(len(bag)), rng.integers(0, k, len(bag))]
      r = rng.random((len(bag), 1), dtype=np.float32)
      new_x = features[bag] + r * (features[ref] - features[bag])
    if "note" in entry:
      logging.warning("MLSMOTE: %s: %s.", classes[c], entry["note"])
    xs.append(new_x)
    ys.append(ranking_labels(labels, bag, nbrs))
    cs.append(np.full(len(bag), c, np.int64))
    samples.append(bag)
    refs.append(ref)
    entry["synthetic"] = int(len(bag))
    logging.info("MLSMOTE: %s: IRLbl %.2f > mean %.2f, %d rows -> %d synthetic rows (k=%d).", classes[c],
                 irlbl[c], mean_ir, len(bag), len(bag), k)
  dim = features.shape[1]
  cat = lambda parts, empty: np.concatenate(parts) if parts else empty
  return Synthetic(
      features=cat(xs, np.zeros((0, dim), np.float32)),
      labels=cat(ys, np.zeros((0, num_classes), np.uint8)),
      origin_class=cat(cs, np.zeros(0, np.int64)),
      sample=cat(samples, np.zeros(0, np.int64)),
      neighbour=cat(refs, np.zeros(0, np.int64)),
      log=log)

"""Bootstrap confidence intervals for per-class metrics, resampling patients (or images) with replacement.

The images of one patient are correlated (follow-up films of the same chest, often the same finding), so
the unit of resampling that matches how a test set is drawn is the patient: `patient_bootstrap_ci` draws
patients with replacement and every image of a drawn patient comes along. `image_bootstrap_ci` resamples
images as if they were independent; on NIH-like data it gives intervals that are too narrow, and is here
for comparison.

A bootstrap sample is represented by draw counts: how many times each patient (or image) was drawn; image
i then has the weight of its patient's count. A metric of the resampled multiset equals the
same metric with those sample weights, so every sample is evaluated on the original arrays, sorted once:
the built-in metrics (`AUROC`, `AUPRC`, and `threshold_metric(...)` for recall, precision, specificity
and F1 at a FIXED threshold) evaluate a whole chunk of samples with a few vectorised NumPy passes, with
no per-sample sort and no scikit-learn call. Any other callable `fn(labels, scores) -> float or None` also
works, evaluated once per sample on the resampled arrays (general, but slow).

Those thresholded intervals hold the validation-chosen threshold fixed, so they leave out the
uncertainty of the choice itself, large when validation holds a handful of positives.
`joint_threshold_intervals` resamples the patients of validation and test together (independently within
each), re-chooses every class's threshold on each validation resample with the same rule as
`metrics.select_thresholds` and measures recall, precision, specificity or F1 on the paired test resample.

Conventions follow `jaxcxr.metrics`: labels > 0.5 are positive, a sample is predicted positive when
`score >= threshold`, AUPRC is average precision, and an undefined metric is None. Samples where the
metric is undefined (e.g. no positive drawn) are skipped; if fewer than `min_valid_fraction` of the
samples remain, the interval is None. Intervals are percentile intervals at level 1 - alpha.
"""

from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tqdm

from jaxcxr import metrics as metrics_lib

# Samples evaluated together: a chunk holds about this many (sample, image) weights (float64).
_CHUNK_ELEMENTS = 2_000_000
MIN_VALID_FRACTION = 0.5

Interval = Optional[Tuple[float, float]]


# ----------------------------------------------------------------------------
# Weighted metrics, vectorised over bootstrap samples.
# ----------------------------------------------------------------------------


class Metric:
  """A metric of weighted samples, vectorised over bootstrap samples.

  `prepare(y, s, groups, num_groups)` runs once per (labels, scores): `groups` (N,) maps each sample to
  one of `num_groups` resampling units (patients). `evaluate(prepared, counts)` takes (B, num_groups)
  draw counts, one row per bootstrap sample (sample i gets the weight counts[b, groups[i]]), and returns
  (B,) float64 values, NaN where the metric is undefined for that sample.
  """

  name = "metric"

  def prepare(self, y: np.ndarray, s: np.ndarray, groups: np.ndarray, num_groups: int):
    raise NotImplementedError

  def evaluate(self, prepared, counts: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def __call__(self, labels, scores, sample_weight=None) -> Optional[float]:
    """The metric of (labels, scores), optionally weighted; None where undefined."""
    y, s = _as_arrays(labels, scores)
    w = np.ones((1, y.size)) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(1, -1)
    if w.shape[1] != y.size:
      raise ValueError(f"sample_weight has {w.shape[1]} entries for {y.size} samples.")
    value = float(self.evaluate(self.prepare(y, s, np.arange(y.size), y.size), w)[0])
    return value if np.isfinite(value) else None

  def __repr__(self):
    return f"<bootstrap metric {self.name}>"


def _as_arrays(labels, scores):
  y = (np.asarray(labels) > 0.5).ravel()
  s = np.asarray(scores, np.float64).ravel()
  if y.shape != s.shape:
    raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape.")
  if not np.isfinite(s).all():
    raise ValueError("scores contain NaN or infinite values.")
  return y, s


def _divide(num, den):
  """num / den, NaN where den == 0."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _sorted_layout(y, s, groups, *, descending):
  """Sorts by score; returns (group of each sorted sample, positions of the positives in sorted order,
  and for each sorted sample the first and one-past-last position of its run of equal scores)."""
  order = np.argsort(-s if descending else s, kind="stable")
  ss = s[order]
  is_start = np.r_[True, ss[1:] != ss[:-1]] if ss.size else np.zeros(0, bool)
  starts = np.flatnonzero(is_start)
  block = np.cumsum(is_start) - 1
  stops = np.r_[starts[1:], ss.size]
  return groups[order], np.flatnonzero(y[order]), starts[block], stops[block], block


def _cumsum0(w):
  """Cumulative sums along axis 1 with a leading zero column: out[:, k] = w[:, :k].sum(1)."""
  out = np.zeros((w.shape[0], w.shape[1] + 1), np.float64 if w.dtype.kind == "f" else np.int64)
  np.cumsum(w, axis=1, out=out[:, 1:])
  return out


class _Auroc(Metric):
  """Area under the ROC curve = P(score of a positive > score of a negative), ties counting 1/2.

  This is the Mann-Whitney statistic (the rank-sum with mid-ranks for ties), which equals scikit-learn's
  trapezoidal `roc_auc_score`. With weights w, sorted ascending and C(x) the weight of samples scoring
  below x plus half of those tying with x, U = sum over positives of w_i C(s_i) - P^2 / 2 (P = weight of
  the positives), and AUROC = U / (P N). Undefined without positives or without negatives.
  """

  name = "auroc"

  def prepare(self, y, s, groups, num_groups):
    col, pos, first, stop, _ = _sorted_layout(y, s, groups, descending=False)
    return col, col[pos], first[pos], stop[pos]

  def evaluate(self, prepared, counts):
    col, pos_col, pos_first, pos_stop = prepared
    cum = _cumsum0(counts[:, col])
    w_pos = counts[:, pos_col].astype(np.float64)
    mid = 0.5 * (cum[:, pos_first] + cum[:, pos_stop])
    p = w_pos.sum(1)
    n = cum[:, -1] - p
    u = np.einsum("bk,bk->b", w_pos, mid) - 0.5 * p * p
    return _divide(u, p * n)


class _AveragePrecision(Metric):
  """AUPRC as average precision, sum_k (R_k - R_{k-1}) P_k over the distinct scores taken as thresholds
  in decreasing order (scikit-learn's `average_precision_score`). Only thresholds whose run of equal
  scores holds a positive add to the sum. Undefined without positives."""

  name = "auprc"

  def prepare(self, y, s, groups, num_groups):
    col, pos, _, stop, block = _sorted_layout(y, s, groups, descending=True)
    # Runs of equal scores that hold positives: the first and one-past-last positive of each, counted
    # along the positives, and where the run ends in the full order.
    _, first = np.unique(block[pos], return_index=True)
    last = np.r_[first[1:], pos.size].astype(np.int64) if pos.size else first
    return col, col[pos], first, last, stop[pos[first]]

  def evaluate(self, prepared, counts):
    col, pos_col, first, last, stop = prepared
    cum = _cumsum0(counts[:, col])
    tp = _cumsum0(counts[:, pos_col])
    tp_end = tp[:, last].astype(np.float64)
    gained = tp_end - tp[:, first]
    predicted = cum[:, stop].astype(np.float64)
    precision = np.divide(tp_end, predicted, out=np.zeros_like(tp_end), where=predicted > 0)
    return _divide(np.einsum("bk,bk->b", gained, precision), tp[:, -1])


THRESHOLD_METRICS = ("recall", "precision", "specificity", "f1")


class _Thresholded(Metric):
  """Recall, precision, specificity or F1 (= 2TP / (2TP + FP + FN)) of `score >= threshold`, the
  threshold fixed in advance (e.g. chosen on validation; it is not re-chosen per sample)."""

  def __init__(self, which: str, threshold: float):
    if which not in THRESHOLD_METRICS:
      raise ValueError(f"Unknown thresholded metric {which!r}; choose one of {THRESHOLD_METRICS}.")
    self.which, self.threshold = which, float(threshold)
    self.name = which

  def prepare(self, y, s, groups, num_groups):
    pred = s >= self.threshold
    cells = np.stack([y & pred, ~y & pred, y & ~pred, ~y & ~pred], axis=1).astype(np.float64)
    per_group = np.zeros((num_groups, 4))  # TP, FP, FN, TN of each group's images.
    np.add.at(per_group, groups, cells)
    return per_group

  def evaluate(self, prepared, counts):
    tp, fp, fn, tn = (counts @ prepared).T
    if self.which == "recall":
      return _divide(tp, tp + fn)
    if self.which == "precision":
      return _divide(tp, tp + fp)
    if self.which == "specificity":
      return _divide(tn, tn + fp)
    return _divide(2 * tp, 2 * tp + fp + fn)

  def __repr__(self):
    return f"<bootstrap metric {self.which} at threshold {self.threshold:g}>"


class _Callable(Metric):
  """Any `fn(labels, scores) -> float or None`, evaluated on each resampled data set (slow)."""

  def __init__(self, fn: Callable):
    self.fn = fn
    self.name = getattr(fn, "__name__", "metric")

  def prepare(self, y, s, groups, num_groups):
    return y, s, groups

  def evaluate(self, prepared, counts):
    y, s, groups = prepared
    out = np.full(len(counts), np.nan)
    for b, c in enumerate(np.rint(counts[:, groups]).astype(np.int64)):
      idx = np.repeat(np.arange(y.size), c)
      value = self.fn(y[idx], s[idx]) if idx.size else None
      if value is not None and np.isfinite(value):
        out[b] = float(value)
    return out


AUROC = _Auroc()
AUPRC = _AveragePrecision()


def threshold_metric(which: str, threshold: float) -> Metric:
  """Recall, precision, specificity or F1 at a fixed `threshold` (predict positive iff score >= it)."""
  return _Thresholded(which, threshold)


MetricLike = Union[str, Metric, Callable]


def get_metric(metric_fn: MetricLike, *, threshold: Optional[float] = None) -> Metric:
  """Resolves 'auroc', 'auprc', 'recall', 'precision', 'specificity', 'f1' (the last four need
  `threshold`), a `Metric`, or a plain callable `fn(labels, scores) -> float or None`."""
  if isinstance(metric_fn, Metric):
    return metric_fn
  if isinstance(metric_fn, str):
    if metric_fn == "auroc":
      return AUROC
    if metric_fn == "auprc":
      return AUPRC
    if metric_fn in THRESHOLD_METRICS:
      if threshold is None:
        raise ValueError(f"Metric {metric_fn!r} needs a fixed threshold.")
      return threshold_metric(metric_fn, threshold)
    raise ValueError(f"Unknown metric {metric_fn!r}; choose auroc, auprc or one of {THRESHOLD_METRICS}.")
  if callable(metric_fn):
    return _Callable(metric_fn)
  raise TypeError(f"metric_fn must be a metric name, a Metric or a callable, got {type(metric_fn).__name__}.")


def auroc(labels, scores, sample_weight=None) -> Optional[float]:
  """AUROC (ties count 1/2) in one sort, without scikit-learn; None without positives or negatives."""
  return AUROC(labels, scores, sample_weight)


def average_precision(labels, scores, sample_weight=None) -> Optional[float]:
  """Average precision (AUPRC) in one sort, without scikit-learn; None without positives."""
  return AUPRC(labels, scores, sample_weight)


# ----------------------------------------------------------------------------
# Resampling.
# ----------------------------------------------------------------------------


def group_index(groups) -> Tuple[np.ndarray, int]:
  """(inverse, G): each sample's index among the G distinct ids of `groups` (e.g. patient ids)."""
  groups = np.asarray(groups).ravel()
  if groups.size == 0:
    return np.zeros(0, np.int64), 0
  _, inverse = np.unique(groups, return_inverse=True)
  inverse = inverse.ravel().astype(np.int64)
  return inverse, int(inverse.max()) + 1


def resample_counts(num_groups: int, *, num_samples: int, seed: int = 0, chunk_size: int = 64):
  """Yields (b, num_groups) int32 draw counts, b <= chunk_size, num_samples rows in all.

  Each row is one bootstrap sample: num_groups groups drawn uniformly with replacement, counts[b, g] the
  number of times group g was drawn (each row sums to num_groups).
  """
  rng = np.random.default_rng(seed)
  for start in range(0, num_samples, chunk_size):
    b = min(chunk_size, num_samples - start)
    if num_groups == 0:
      yield np.zeros((b, 0), np.int32)
      continue
    draws = rng.integers(0, num_groups, size=(b, num_groups))
    draws += num_groups * np.arange(b)[:, None]
    yield np.bincount(draws.ravel(), minlength=b * num_groups).reshape(b, num_groups).astype(np.int32)


def bootstrap_values(
    jobs: Sequence[Tuple[MetricLike, np.ndarray, np.ndarray]],
    *,
    groups,
    num_samples: int = 1000,
    seed: int = 0,
    progress: bool = False,
    desc: str = "bootstrap",
) -> np.ndarray:
  """The bootstrap distributions of several metrics on shared resamples.

  Args:
    jobs: (metric, labels (N,), scores (N,)) triples; metric as for `get_metric` (thresholded metrics
      must be `Metric`s, e.g. `threshold_metric('f1', 0.3)`). All share the N samples and `groups`.
    groups: (N,) group ids (patients), the unit of resampling.
    num_samples: bootstrap samples.
    seed: seed of the resampling.
    progress: show a tqdm bar over the samples.
    desc: the bar's label.

  Returns:
    (len(jobs), num_samples) float64, NaN where a metric is undefined on a sample.
  """
  inverse, num_groups = group_index(groups)
  prepared = []
  for metric_fn, labels, scores in jobs:
    metric = get_metric(metric_fn)
    y, s = _as_arrays(labels, scores)
    if y.size != inverse.size:
      raise ValueError(f"{inverse.size} group ids (patients) for {y.size} samples.")
    prepared.append((metric, metric.prepare(y, s, inverse, num_groups)))
  out = np.full((len(prepared), max(num_samples, 0)), np.nan)
  if not prepared or num_samples <= 0:
    return out
  # About _CHUNK_ELEMENTS (sample, image) cells per chunk.
  chunk = int(np.clip(_CHUNK_ELEMENTS // max(inverse.size, num_groups, 1), 1, 256))
  bar = tqdm.tqdm(total=num_samples, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True,
                  leave=False)
  done = 0
  for counts in resample_counts(num_groups, num_samples=num_samples, seed=seed, chunk_size=chunk):
    b = len(counts)
    for j, (metric, state) in enumerate(prepared):
      out[j, done:done + b] = metric.evaluate(state, counts)
    done += b
    bar.update(b)
  bar.close()
  return out


def percentile_interval(values, *, alpha: float = 0.05, min_valid_fraction: float = MIN_VALID_FRACTION) -> Interval:
  """The (alpha/2, 1 - alpha/2) percentiles of the finite `values`; None if fewer than
  `min_valid_fraction` of them are finite (the metric was undefined on too many samples)."""
  values = np.asarray(values, np.float64).ravel()
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
  valid = values[np.isfinite(values)]
  if valid.size == 0 or valid.size < min_valid_fraction * values.size:
    return None
  low, high = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return float(low), float(high)


def _bootstrap_ci(*, labels, scores, groups, metric_fn, num_samples, alpha, seed, threshold,
                  min_valid_fraction, progress) -> Interval:
  metric = get_metric(metric_fn, threshold=threshold)
  values = bootstrap_values([(metric, labels, scores)], groups=groups, num_samples=num_samples, seed=seed,
                            progress=progress)[0]
  return percentile_interval(values, alpha=alpha, min_valid_fraction=min_valid_fraction)


def patient_bootstrap_ci(
    *,
    labels,
    scores,
    patients,
    metric_fn: MetricLike,
    num_samples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    threshold: Optional[float] = None,
    min_valid_fraction: float = MIN_VALID_FRACTION,
    progress: bool = False,
) -> Interval:
  """Percentile interval of a metric over bootstrap samples of PATIENTS (with all their images).

  Args:
    labels: (N,) 0/1 labels of one class.
    scores: (N,) scores.
    patients: (N,) patient id of each image.
    metric_fn: 'auroc', 'auprc', 'recall', 'precision', 'specificity', 'f1' (the last four at the fixed
      `threshold`), a `Metric`, or a callable `fn(labels, scores) -> float or None` (slow).
    num_samples: bootstrap samples.
    alpha: 1 - confidence level.
    seed: seed of the resampling.
    threshold: the fixed operating threshold of the thresholded metrics.
    min_valid_fraction: the least share of samples on which the metric must be defined.
    progress: show a tqdm bar.

  Returns:
    (low, high) as floats, or None when the metric is undefined on too many samples.
  """
  return _bootstrap_ci(labels=labels, scores=scores, groups=patients, metric_fn=metric_fn,
                       num_samples=num_samples, alpha=alpha, seed=seed, threshold=threshold,
                       min_valid_fraction=min_valid_fraction, progress=progress)


def image_bootstrap_ci(
    *,
    labels,
    scores,
    metric_fn: MetricLike,
    num_samples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    threshold: Optional[float] = None,
    min_valid_fraction: float = MIN_VALID_FRACTION,
    progress: bool = False,
) -> Interval:
  """As `patient_bootstrap_ci`, resampling images as if independent (too narrow for correlated images)."""
  n = np.asarray(labels).size
  return _bootstrap_ci(labels=labels, scores=scores, groups=np.arange(n), metric_fn=metric_fn,
                       num_samples=num_samples, alpha=alpha, seed=seed, threshold=threshold,
                       min_valid_fraction=min_valid_fraction, progress=progress)


def class_intervals(
    *,
    labels,
    scores,
    patients,
    thresholds,
    classes: Sequence[str],
    metrics: Sequence[str] = ("auroc", "auprc", "recall", "f1"),
    num_samples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    min_valid_fraction: float = MIN_VALID_FRACTION,
    progress: bool = False,
) -> Mapping[str, Mapping[str, Interval]]:
  """Patient-bootstrap intervals of several metrics for every class, all on the same resamples.

  Args:
    labels: (N, C) 0/1 labels.
    scores: (N, C) scores.
    patients: (N,) patient ids.
    thresholds: (C,) fixed thresholds of the thresholded metrics (e.g. chosen on validation).
    classes: the C class names.
    metrics: names among 'auroc', 'auprc' and THRESHOLD_METRICS.
    num_samples, alpha, seed, min_valid_fraction, progress: as for `patient_bootstrap_ci`.

  Returns:
    {class: {metric: (low, high) or None}}.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  if labels.ndim != 2 or labels.shape != scores.shape or labels.shape[1] != len(classes):
    raise ValueError(f"Need (N, {len(classes)}) labels and scores, got {labels.shape} and {scores.shape}.")
  thresholds = np.asarray(thresholds, np.float64)
  jobs, keys = [], []
  for c, name in enumerate(classes):
    for m in metrics:
      jobs.append((get_metric(m, threshold=thresholds[c]), labels[:, c], scores[:, c]))
      keys.append((name, m))
  values = bootstrap_values(jobs, groups=patients, num_samples=num_samples, seed=seed, progress=progress,
                            desc="patient bootstrap")
  out = {name: {} for name in classes}
  for (name, m), v in zip(keys, values):
    out[name][m] = percentile_interval(v, alpha=alpha, min_valid_fraction=min_valid_fraction)
  return out


# ----------------------------------------------------------------------------
# Joint bootstrap of validation and test: the threshold is re-chosen on every validation resample.
# ----------------------------------------------------------------------------

JOINT_METRICS = ("recall", "precision", "specificity", "f1")


def choose_thresholds_weighted(*, labels, scores, weights, rule: str = "max_f1",
                               target_recall: float = 0.9) -> np.ndarray:
  """`metrics.choose_threshold` for one class on many weighted copies of the data at once.

  Row b of `weights` (B, N) holds whole-number weights (bootstrap draw counts); its threshold is the one
  `metrics.choose_threshold` gives on the data with sample i repeated weights[b, i] times (a sample of
  weight 0 is absent: its score is no candidate). The rules are the same: 'max_f1' (ties to the lowest
  threshold), 'target_recall' (the highest threshold whose recall reaches target_recall), 'youden' (the
  highest threshold maximising TPR - FPR; the lowest present score without negatives) and 'fixed'; 0.5
  where a row has no positive.

  Returns:
    (B,) float64 thresholds.
  """
  if rule not in metrics_lib.THRESHOLD_RULES:
    raise ValueError(f"Unknown threshold rule {rule!r}; choose one of {metrics_lib.THRESHOLD_RULES}.")
  y, s = _as_arrays(labels, scores)
  w = np.asarray(weights, np.float64)
  if w.ndim != 2 or w.shape[1] != y.size:
    raise ValueError(f"weights must be (B, {y.size}), got {w.shape}.")
  out = np.full(w.shape[0], metrics_lib.FIXED_THRESHOLD)
  if rule == "fixed" or y.size == 0:
    return out
  if not y.any():
    return out
  order = np.argsort(-s, kind="stable")
  ss, yo = s[order], y[order]
  block = np.cumsum(np.r_[True, ss[1:] != ss[:-1]]) - 1  # Run of equal scores of each sorted sample.
  ends = np.r_[np.flatnonzero(np.diff(block)), ss.size - 1]  # Last position of each run.
  # Every rule's choice is a run holding a present positive (below it only negatives join, which lowers F1
  # and J and leaves recall as it is), so only those runs are candidates: few for a rare class.
  runs = np.unique(block[yo])
  candidates = ss[ends[runs]]  # Decreasing.
  wo = w.T[order]  # (N, B): cumulative sums run down axis 0.
  predicted = np.cumsum(wo, axis=0)[ends[runs]].T  # (B, K): weight scoring >= each candidate.
  pos_runs = np.searchsorted(runs, block[yo])  # Candidate of each positive.
  tp = np.cumsum(wo[yo], axis=0)[np.r_[np.flatnonzero(np.diff(pos_runs)), pos_runs.size - 1]].T
  # A candidate is present when one of its positives is drawn.
  present = np.diff(np.c_[np.zeros(len(w)), tp], axis=1) > 0
  pos, total = tp[:, -1:], np.sum(w, axis=1, keepdims=True)
  has_pos = pos[:, 0] > 0
  with np.errstate(divide="ignore", invalid="ignore"):
    recall = tp / pos
    if rule == "max_f1":
      precision = np.where(predicted > 0, tp / predicted, 0.0)
      denom = precision + recall
      f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
      f1 = np.where(present, f1, -np.inf)
      pick = f1.shape[1] - 1 - np.argmax(f1[:, ::-1], axis=1)  # Last maximum = lowest threshold.
    elif rule == "target_recall":
      pick = np.argmax(present & (recall >= target_recall), axis=1)  # First = highest threshold.
    else:  # youden
      j = np.where(present, recall - (predicted - tp) / (total - pos), -np.inf)
      pick = np.argmax(j, axis=1)  # First maximum = highest threshold.
  choice = candidates[pick]
  if rule == "youden":  # Without negatives: the lowest present score (of any sample).
    lowest = ss[ss.size - 1 - np.argmax(wo[::-1] > 0, axis=0)]
    choice = np.where(total[:, 0] == pos[:, 0], lowest, choice)
  return np.where(has_pos, choice, out)


def _rates_at(y, s, groups, num_groups, counts, thresholds):
  """(TP, FP, FN, TN) weights, each (B,), of `score >= thresholds[b]` when group g has weight counts[b, g]."""
  unique, which = np.unique(thresholds, return_inverse=True)
  predicted = s[None, :] >= unique[:, None]  # (K, N): few distinct thresholds per chunk.
  cell = np.arange(len(unique))[:, None] * num_groups + groups[None, :]
  size = len(unique) * num_groups
  tp_g = np.bincount(cell[predicted & y[None, :]], minlength=size).reshape(len(unique), num_groups)
  pp_g = np.bincount(cell[predicted], minlength=size).reshape(len(unique), num_groups)
  counts = counts.astype(np.float64)
  tp = np.einsum("bg,bg->b", counts, tp_g[which])
  pp = np.einsum("bg,bg->b", counts, pp_g[which])
  pos = counts @ np.bincount(groups[y], minlength=num_groups)
  total = counts @ np.bincount(groups, minlength=num_groups)
  return tp, pp - tp, pos - tp, total - pos - (pp - tp)


def joint_threshold_values(
    *,
    val_labels,
    val_scores,
    val_patients,
    test_labels,
    test_scores,
    test_patients,
    rule: str = "max_f1",
    target_recall: float = 0.9,
    metrics: Sequence[str] = ("recall", "precision", "f1"),
    num_samples: int = 1000,
    seed: int = 0,
    resample_validation: bool = True,
    progress: bool = False,
):
  """Bootstrap distributions of thresholded test metrics whose threshold is re-chosen per resample.

  Every sample draws the patients of validation and of test with replacement (independently; each
  patient brings all their images), chooses each class's threshold on the validation resample with
  `rule` (as `metrics.select_thresholds` does; see `choose_thresholds_weighted`) and computes `metrics`
  on the paired test resample at that threshold. The test resamples are those of `bootstrap_values` with
  the same `seed`, so with resample_validation=False (thresholds chosen once on the full validation set)
  the result equals the fixed-threshold path.

  Args:
    val_labels, val_scores: (Nv, C) validation labels and scores.
    val_patients: (Nv,) validation patient ids.
    test_labels, test_scores: (Nt, C) test labels and scores.
    test_patients: (Nt,) test patient ids.
    rule, target_recall: the threshold rule (config.train.threshold_rule / target_recall).
    metrics: names among JOINT_METRICS.
    num_samples: bootstrap samples.
    seed: seed of the resampling.
    resample_validation: False holds validation (hence the thresholds) fixed.
    progress: show a tqdm bar.

  Returns:
    (values, thresholds): values (len(metrics), C, num_samples) float64, NaN where a metric is undefined
    on a sample; thresholds (C, num_samples), the threshold each sample chose.
  """
  unknown = [m for m in metrics if m not in JOINT_METRICS]
  if unknown:
    raise ValueError(f"Unknown metric {unknown[0]!r}; choose among {JOINT_METRICS}.")
  vy, vs = np.asarray(val_labels) > 0.5, np.asarray(val_scores, np.float64)
  ty, ts = np.asarray(test_labels) > 0.5, np.asarray(test_scores, np.float64)
  if vy.ndim != 2 or vy.shape != vs.shape or ty.shape != ts.shape or ty.ndim != 2 or vy.shape[1] != ty.shape[1]:
    raise ValueError(f"Need (N, C) labels and scores with one C, got validation {vy.shape} / {vs.shape} and "
                     f"test {ty.shape} / {ts.shape}.")
  if not (np.isfinite(vs).all() and np.isfinite(ts).all()):
    raise ValueError("scores contain NaN or infinite values.")
  v_inverse, v_groups = group_index(val_patients)
  t_inverse, t_groups = group_index(test_patients)
  if v_inverse.size != len(vy) or t_inverse.size != len(ty):
    raise ValueError(f"{v_inverse.size} / {t_inverse.size} patient ids for {len(vy)} validation / {len(ty)} test "
                     "images.")
  num_classes = vy.shape[1]
  values = np.full((len(metrics), num_classes, max(num_samples, 0)), np.nan)
  chosen = np.full((num_classes, max(num_samples, 0)), np.nan)
  fixed = metrics_lib.select_thresholds(labels=vy, scores=vs, rule=rule, target_recall=target_recall)
  if num_samples <= 0:
    return values, chosen
  # Chunks as in bootstrap_values (same test draws for the same seed), sized for the larger split.
  chunk = int(np.clip(_CHUNK_ELEMENTS // max(ty.shape[0], t_groups, 1), 1, 256))
  chunk = min(chunk, int(np.clip(_CHUNK_ELEMENTS // max(vy.shape[0], v_groups, 1), 1, 256)))
  val_seed = np.random.SeedSequence([seed, 0x7A11])  # Independent of the test draws.
  test_draws = resample_counts(t_groups, num_samples=num_samples, seed=seed, chunk_size=chunk)
  val_draws = resample_counts(v_groups, num_samples=num_samples, seed=val_seed, chunk_size=chunk)
  bar = tqdm.tqdm(total=num_samples, desc="joint bootstrap", unit="sample", disable=not progress,
                  dynamic_ncols=True, leave=False)
  done = 0
  for t_counts, v_counts in zip(test_draws, val_draws):
    b = len(t_counts)
    v_weights = v_counts[:, v_inverse].astype(np.float64)
    for c in range(num_classes):
      if resample_validation:
        thresholds = choose_thresholds_weighted(labels=vy[:, c], scores=vs[:, c], weights=v_weights, rule=rule,
                                                target_recall=target_recall)
      else:
        thresholds = np.full(b, fixed[c])
      chosen[c, done:done + b] = thresholds
      tp, fp, fn, tn = _rates_at(ty[:, c], ts[:, c], t_inverse, t_groups, t_counts, thresholds)
      for k, m in enumerate(metrics):
        num, den = {"recall": (tp, tp + fn), "precision": (tp, tp + fp), "specificity": (tn, tn + fp),
                    "f1": (2 * tp, 2 * tp + fp + fn)}[m]
        values[k, c, done:done + b] = _divide(num, den)
    done += b
    bar.update(b)
  bar.close()
  return values, chosen


def joint_threshold_intervals(
    *,
    val_labels,
    val_scores,
    val_patients,
    test_labels,
    test_scores,
    test_patients,
    classes: Sequence[str],
    rule: str = "max_f1",
    target_recall: float = 0.9,
    metrics: Sequence[str] = ("recall", "precision", "f1"),
    num_samples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    resample_validation: bool = True,
    min_valid_fraction: float = MIN_VALID_FRACTION,
    progress: bool = False,
) -> Mapping[str, Mapping[str, Interval]]:
  """Percentile intervals of thresholded test metrics that carry the threshold's own uncertainty.

  `joint_threshold_values` (same arguments) summarised per class: {class: {metric: (low, high) or None,
  ..., 'threshold': (low, high)}}, the last being the spread of the thresholds the validation resamples
  chose. Unlike `class_intervals`, which holds the validation-chosen threshold fixed, these intervals are
  wide when validation holds few positives, as the threshold is then itself uncertain.
  """
  values, chosen = joint_threshold_values(
      val_labels=val_labels, val_scores=val_scores, val_patients=val_patients, test_labels=test_labels,
      test_scores=test_scores, test_patients=test_patients, rule=rule, target_recall=target_recall,
      metrics=metrics, num_samples=num_samples, seed=seed, resample_validation=resample_validation,
      progress=progress)
  if len(classes) != chosen.shape[0]:
    raise ValueError(f"{len(classes)} class names for {chosen.shape[0]} classes.")
  out = {}
  for c, name in enumerate(classes):
    out[name] = {m: percentile_interval(values[k, c], alpha=alpha, min_valid_fraction=min_valid_fraction)
                 for k, m in enumerate(metrics)}
    out[name]["threshold"] = percentile_interval(chosen[c], alpha=alpha, min_valid_fraction=min_valid_fraction)
  return out

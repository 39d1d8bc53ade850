"""Per-class evaluation of multi-label scores: metrics and operating thresholds (pure numbers).

Reports built from them (the dict, its files, tables and plots) are in reports.py.

Everything here is NumPy / scikit-learn on host arrays: `labels` are 0/1 (values
> 0.5 count as positive) and `scores` are probabilities (sigmoid outputs), both
of shape (N,) for one class or (N, C) for all classes. A sample is predicted
positive when `score >= threshold`, the convention of scikit-learn's curves.

Metrics that are undefined on the given data (AUROC without positives or
negatives, recall without positives, precision without predicted positives,
...) are None rather than NaN, so reports stay valid JSON, and all values are
plain Python ints / floats.
"""

import math
from typing import Optional, Sequence

import numpy as np
from sklearn import metrics as skm

THRESHOLD_RULES = ("max_f1", "target_recall", "youden", "fixed")
FIXED_THRESHOLD = 0.5

# The averaged metrics of `evaluate_scores`' 'macro' entry (counts and thresholds are not averaged).
METRIC_KEYS = (
    "auroc", "auprc", "recall", "specificity", "precision", "f1",
    "recall_at_0.5", "precision_at_0.5", "f1_at_0.5",
)


# ----------------------------------------------------------------------------
# Thresholds.
# ----------------------------------------------------------------------------


def as_binary(labels) -> np.ndarray:
  """Labels as a bool array (values > 0.5 are positive)."""
  return np.asarray(labels) > 0.5


def as_scores(scores) -> np.ndarray:
  return np.asarray(scores, np.float64)


def choose_threshold(
    *, labels, scores, rule: str = "max_f1", target_recall: float = 0.9
) -> float:
  """Chooses an operating threshold for one class (predict positive iff score >= threshold).

  Rules:
    * 'max_f1': the threshold maximising F1 on these labels (over every
      distinct score, via `precision_recall_curve`; ties go to the lowest).
    * 'target_recall': the highest threshold whose recall is >= target_recall.
    * 'youden': the threshold maximising Youden's J = TPR - FPR (`roc_curve`);
      without negatives FPR is taken as 0, i.e. the lowest score.
    * 'fixed': 0.5.

  Without positives no rule is meaningful and 0.5 is returned.

  Args:
    labels: (N,) 0/1 labels.
    scores: (N,) scores.
    rule: one of THRESHOLD_RULES.
    target_recall: the recall 'target_recall' must reach.

  Returns:
    The threshold, a Python float (one of the scores unless it is 0.5).
  """
  if rule not in THRESHOLD_RULES:
    raise ValueError(f"Unknown threshold rule {rule!r}; choose one of {THRESHOLD_RULES}.")
  y, s = as_binary(labels), as_scores(scores)
  if rule == "fixed" or not y.any():
    return FIXED_THRESHOLD

  if rule == "youden":
    if y.all():
      return float(s.min())
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=False)
    j = np.where(np.isfinite(thresholds), tpr - fpr, -np.inf)
    return float(thresholds[np.argmax(j)])

  # precision[i], recall[i] are those of `score >= thresholds[i]`; the last
  # entries (precision 1, recall 0) belong to no threshold.
  precision, recall, thresholds = skm.precision_recall_curve(y, s)
  precision, recall = precision[:-1], recall[:-1]
  if rule == "max_f1":
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[np.argmax(f1)])
  # target_recall: recall is non-increasing in the threshold and is 1 at the lowest one.
  return float(thresholds[recall >= target_recall].max())


def select_thresholds(
    *, labels, scores, rule: str = "max_f1", target_recall: float = 0.9
) -> np.ndarray:
  """Chooses one threshold per class (on validation data) with `choose_threshold`.

  Args:
    labels: (N, C) 0/1 labels.
    scores: (N, C) scores.
    rule: one of THRESHOLD_RULES.
    target_recall: for rule 'target_recall'.

  Returns:
    (C,) float64 thresholds.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  check_shapes(labels, scores)
  return np.array([
      choose_threshold(labels=labels[:, c], scores=scores[:, c], rule=rule, target_recall=target_recall)
      for c in range(labels.shape[1])
  ], np.float64)


# ----------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------


def _ratio(num: int, den: int) -> Optional[float]:
  return num / den if den else None


def confusion_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
  """Recall, specificity, precision and F1 (= 2TP / (2TP + FP + FN)) from bool arrays."""
  tp = int(np.sum(y & pred))
  fp = int(np.sum(~y & pred))
  fn = int(np.sum(y & ~pred))
  tn = int(np.sum(~y & ~pred))
  return {
      "recall": _ratio(tp, tp + fn),
      "specificity": _ratio(tn, tn + fp),
      "precision": _ratio(tp, tp + fp),
      "f1": _ratio(2 * tp, 2 * tp + fp + fn),
  }


def binary_metrics(*, labels, scores, threshold: float) -> dict:
  """Threshold-free and thresholded metrics of one class.

  Args:
    labels: (N,) 0/1 labels.
    scores: (N,) scores.
    threshold: operating threshold (predict positive iff score >= threshold).

  Returns:
    {'n_pos', 'n', 'auroc', 'auprc', 'recall', 'specificity', 'precision',
    'f1', 'threshold', 'recall_at_0.5', 'precision_at_0.5', 'f1_at_0.5'}.
    AUPRC is average precision. Undefined values are None: AUROC without
    positives or negatives, AUPRC and recall without positives, specificity
    without negatives, precision without predicted positives, F1 when there
    are neither positives nor predicted positives.
  """
  y, s = as_binary(labels).ravel(), as_scores(scores).ravel()
  if y.shape != s.shape:
    raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape.")
  n, n_pos = int(y.size), int(y.sum())
  out = {
      "n_pos": n_pos,
      "n": n,
      "auroc": float(skm.roc_auc_score(y, s)) if 0 < n_pos < n else None,
      "auprc": float(skm.average_precision_score(y, s)) if n_pos else None,
  }
  out.update(confusion_metrics(y, s >= threshold))
  out["threshold"] = float(threshold)
  at_half = confusion_metrics(y, s >= FIXED_THRESHOLD)
  for key in ("recall", "precision", "f1"):
    out[f"{key}_at_0.5"] = at_half[key]
  return out


def check_shapes(labels: np.ndarray, scores: np.ndarray, classes=None, thresholds=None):
  if labels.ndim != 2 or labels.shape != scores.shape:
    raise ValueError(f"Need (N, C) labels and scores of equal shape, got {labels.shape} and {scores.shape}.")
  num_classes = labels.shape[1]
  if classes is not None and len(classes) != num_classes:
    raise ValueError(f"{len(classes)} class names for {num_classes} columns.")
  if thresholds is not None and np.shape(thresholds) != (num_classes,):
    raise ValueError(f"Need ({num_classes},) thresholds, got shape {np.shape(thresholds)}.")


def mean_defined(values) -> Optional[float]:
  """Mean of the values that are not None (None when there are none): a macro average over classes."""
  defined = [v for v in values if v is not None]
  return math.fsum(defined) / len(defined) if defined else None


def evaluate_scores(*, labels, scores, classes: Sequence[str], thresholds) -> dict:
  """Per-class metrics and their macro averages.

  Args:
    labels: (N, C) 0/1 labels.
    scores: (N, C) scores.
    classes: the C class names, in column order.
    thresholds: (C,) operating thresholds (e.g. from `select_thresholds` on validation).

  Returns:
    {'classes': {name: binary_metrics(...)}, 'macro': {metric: mean}} where each
    macro value is the mean of that metric (METRIC_KEYS) over the classes where
    it is defined, None if it is defined for none.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  check_shapes(labels, scores, classes, thresholds)
  per_class = {
      name: binary_metrics(labels=labels[:, c], scores=scores[:, c], threshold=float(thresholds[c]))
      for c, name in enumerate(classes)
  }
  macro = {k: mean_defined(m[k] for m in per_class.values()) for k in METRIC_KEYS}
  return {"classes": per_class, "macro": macro}

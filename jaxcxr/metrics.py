"""Per-class evaluation of multi-label scores: metrics, operating thresholds and reports.

Everything here is NumPy / scikit-learn on host arrays: `labels` are 0/1 (values
> 0.5 count as positive) and `scores` are probabilities (sigmoid outputs), both
of shape (N,) for one class or (N, C) for all classes. A sample is predicted
positive when `score >= threshold`, the convention of scikit-learn's curves.

Metrics that are undefined on the given data (AUROC without positives or
negatives, recall without positives, precision without predicted positives,
...) are None rather than NaN, so reports stay valid JSON, and all values are
plain Python ints / floats.
"""

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
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


def _binary(labels) -> np.ndarray:
  """Labels as a bool array (values > 0.5 are positive)."""
  return np.asarray(labels) > 0.5


def _scores(scores) -> np.ndarray:
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
  y, s = _binary(labels), _scores(scores)
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
  _check_shapes(labels, scores)
  return np.array([
      choose_threshold(labels=labels[:, c], scores=scores[:, c], rule=rule, target_recall=target_recall)
      for c in range(labels.shape[1])
  ], np.float64)


# ----------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------


def _ratio(num: int, den: int) -> Optional[float]:
  return num / den if den else None


def _confusion_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
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
  y, s = _binary(labels).ravel(), _scores(scores).ravel()
  if y.shape != s.shape:
    raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape.")
  n, n_pos = int(y.size), int(y.sum())
  out = {
      "n_pos": n_pos,
      "n": n,
      "auroc": float(skm.roc_auc_score(y, s)) if 0 < n_pos < n else None,
      "auprc": float(skm.average_precision_score(y, s)) if n_pos else None,
  }
  out.update(_confusion_metrics(y, s >= threshold))
  out["threshold"] = float(threshold)
  at_half = _confusion_metrics(y, s >= FIXED_THRESHOLD)
  for key in ("recall", "precision", "f1"):
    out[f"{key}_at_0.5"] = at_half[key]
  return out


def _check_shapes(labels: np.ndarray, scores: np.ndarray, classes=None, thresholds=None):
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
  _check_shapes(labels, scores, classes, thresholds)
  per_class = {
      name: binary_metrics(labels=labels[:, c], scores=scores[:, c], threshold=float(thresholds[c]))
      for c, name in enumerate(classes)
  }
  macro = {k: mean_defined(m[k] for m in per_class.values()) for k in METRIC_KEYS}
  return {"classes": per_class, "macro": macro}


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def _fmt(value, spec: str = ".3f") -> str:
  if value is None:
    return "n/a"
  if spec == "d" or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
    return str(int(value))
  return format(float(value), spec)


# (header, key, format) of the Markdown table.
_MD_COLUMNS = (
    ("n_pos", "n_pos", "d"), ("AUROC", "auroc", ".3f"), ("AUPRC", "auprc", ".3f"),
    ("recall", "recall", ".3f"), ("specificity", "specificity", ".3f"),
    ("precision", "precision", ".3f"), ("F1", "f1", ".3f"), ("threshold", "threshold", ".4f"),
    ("recall@0.5", "recall_at_0.5", ".3f"),
)
# (header, key, format, width) of the terminal table.
_TERM_COLUMNS = (
    ("n_pos", "n_pos", "d", 6), ("AUROC", "auroc", ".3f", 6), ("AUPRC", "auprc", ".3f", 6),
    ("recall", "recall", ".3f", 6), ("prec", "precision", ".3f", 6), ("F1", "f1", ".3f", 6),
    ("thr", "threshold", ".3f", 6), ("rec@.5", "recall_at_0.5", ".3f", 6),
)


def _json_default(obj):
  """Makes NumPy scalars and arrays (and paths) JSON-serialisable."""
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _title(report: Mapping[str, Any]) -> str:
  return f"split '{report.get('split', '?')}', checkpoint step {report.get('checkpoint_step', '?')}"


def _markdown(report: Mapping[str, Any], *, classes: Sequence[str], num_examples: int,
              highlight: Optional[str]) -> str:
  """The report as Markdown: a header, the extra scalar fields, one table row per class, macro row."""
  lines = [f"# Evaluation: {_title(report)}", "",
           f"{num_examples} images, {len(classes)} classes. Thresholded metrics use the per-class "
           "`threshold`; recall@0.5 uses 0.5. n/a = undefined on this split.", ""]
  extras = {k: v for k, v in report.items()
            if k not in ("split", "checkpoint_step", "classes", "macro")
            and (v is None or isinstance(v, (str, int, float, bool, np.generic)))}
  lines += [f"- {k}: `{v}`" for k, v in extras.items()]
  if extras:
    lines.append("")
  lines.append("| class | " + " | ".join(h for h, _, _ in _MD_COLUMNS) + " |")
  lines.append("|:--|" + "--:|" * len(_MD_COLUMNS))
  for name in classes:
    m = report["classes"][name]
    label = f"**{name}**" if name == highlight else name
    lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k), f) for _, k, f in _MD_COLUMNS) + " |")
  macro = report.get("macro", {})
  cells = ["" if k in ("n_pos", "threshold") else _fmt(macro.get(k), f) for _, k, f in _MD_COLUMNS]
  lines.append("| *macro* | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def format_table(report: Mapping[str, Any], *, classes: Optional[Sequence[str]] = None) -> str:
  """A fixed-width text table of per-class metrics plus the macro row, for the terminal.

  Args:
    report: a dict with 'classes' ({name: binary_metrics}) and optionally 'macro'.
    classes: the rows to show, in order (default: all of report['classes']).

  Returns:
    The table, undefined values shown as 'n/a'.
  """
  classes = list(report["classes"]) if classes is None else list(classes)
  width = max([len("class"), len("macro")] + [len(c) for c in classes])
  header = f"{'class':<{width}}" + "".join(f" {h:>{w}}" for h, _, _, w in _TERM_COLUMNS)
  rows = [header, "-" * len(header)]
  for name in classes:
    m = report["classes"][name]
    rows.append(f"{name:<{width}}" + "".join(f" {_fmt(m.get(k), f):>{w}}" for _, k, f, w in _TERM_COLUMNS))
  if report.get("macro"):
    macro = report["macro"]
    rows.append("-" * len(header))
    rows.append(f"{'macro':<{width}}" + "".join(
        f" {'' if k in ('n_pos', 'threshold') else _fmt(macro.get(k), f):>{w}}" for _, k, f, w in _TERM_COLUMNS))
  return "\n".join(rows)


def _operating_point(y: np.ndarray, s: np.ndarray, threshold: float):
  """(FPR, recall, precision) of `s >= threshold`, precision None without predicted positives."""
  pred = s >= threshold
  m = _confusion_metrics(y, pred)
  fpr = None if m["specificity"] is None else 1.0 - m["specificity"]
  return fpr, m["recall"], m["precision"]


def _class_color(c: int):
  """Distinct colours for up to 20 classes: the dark tab20 shades first, then the light ones."""
  return colormaps["tab20"]((2 * c) % 20 + (c // 10) % 2)


def _plot_curves(*, kind: str, report, labels, scores, classes, highlight, path) -> None:
  """Draws all per-class ROC or PR curves in one figure and saves it to `path`.

  The highlight class is drawn last (on top), bold, with its operating points,
  and listed first in the legend.
  """
  fig = Figure(figsize=(9.5, 6.5), dpi=110)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  metric = "auroc" if kind == "roc" else "auprc"
  macro = (report.get("macro") or {}).get(metric)
  top, rest = [], []  # legend entries: the highlight class's first
  order = [c for c, name in enumerate(classes) if name != highlight]
  order += [c for c, name in enumerate(classes) if name == highlight]
  for c in order:
    name = classes[c]
    bold = name == highlight
    y, s = _binary(labels[:, c]), _scores(scores[:, c])
    n_pos = int(y.sum())
    if n_pos == 0 or (kind == "roc" and n_pos == y.size):
      missing = "positives" if n_pos == 0 else "negatives"
      (top if bold else rest).extend(ax.plot([], [], " ", label=f"{name}: n/a (no {missing})"))
      continue
    if kind == "roc":
      x_vals, y_vals, _ = skm.roc_curve(y, s)
    else:
      precision, recall, _ = skm.precision_recall_curve(y, s)
      x_vals, y_vals = recall, precision
    value = report["classes"].get(name, {}).get(metric)
    line, = ax.plot(x_vals, y_vals, color="black" if bold else _class_color(c),
                    lw=2.6 if bold else 1.1, alpha=1.0 if bold else 0.8, zorder=3 if bold else 2,
                    drawstyle="default" if kind == "roc" else "steps-post",
                    label=f"{name}: {metric.upper()} {_fmt(value)}")
    if bold:
      top.append(line)
      top.extend(_mark_operating_points(
          ax, kind=kind, y=y, s=s, threshold=report["classes"].get(name, {}).get("threshold")))
    else:
      rest.append(line)
  if kind == "roc":
    rest.extend(ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance"))
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (recall, sensitivity)")
    title = "ROC curves" + (f" (macro AUROC {macro:.3f})" if macro is not None else "")
  else:
    if highlight is not None:
      prevalence = float(_binary(labels[:, list(classes).index(highlight)]).mean())
      top.append(ax.axhline(prevalence, ls=":", color="black", lw=1,
                            label=f"  {highlight} prevalence (chance) {prevalence:.4f}"))
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (positive predictive value)")
    title = "Precision-recall curves" + (f" (macro AUPRC {macro:.3f})" if macro is not None else "")
  ax.set_title(f"{title}\n{_title(report)}")
  ax.set_xlim(-0.01, 1.01)
  ax.set_ylim(-0.01, 1.01)
  ax.set_aspect("equal")
  ax.grid(alpha=0.3)
  ax.legend(handles=top + rest, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
  fig.savefig(path, bbox_inches="tight")


def _mark_operating_points(ax, *, kind: str, y, s, threshold) -> list:
  """Marks the highlighted class at its chosen threshold (filled) and at 0.5 (hollow); returns the markers."""
  markers = []
  points = [(threshold, "o", "red", "chosen threshold"), (FIXED_THRESHOLD, "s", "none", "threshold")]
  for thr, marker, face, what in points:
    if thr is None:
      continue
    fpr, recall, precision = _operating_point(y, s, thr)
    xy = (fpr, recall) if kind == "roc" else (recall, precision)
    if None in xy:
      continue
    other = f"FPR {fpr:.3f}" if kind == "roc" else f"precision {precision:.3f}"
    markers.extend(ax.plot(*xy, marker=marker, ms=9, mfc=face, mec="red", mew=1.8, ls="none", zorder=4,
                           label=f"  {what} {thr:.3g}: recall {recall:.3f}, {other}"))
  return markers


# The scores a report was computed on, beside it (np.load(..., allow_pickle=False)): `scores` (N, C) float32
# and `labels` (N, C) uint8, rows in the split's order. The study bootstraps them without re-predicting.
SCORES_FILE = "scores.npz"


def write_report(
    report: Mapping[str, Any],
    out_dir,
    *,
    labels,
    scores,
    classes: Sequence[str],
    highlight: Optional[str] = None,
) -> None:
  """Writes report.json, report.md, roc.png, pr.png and SCORES_FILE to `out_dir` (created if needed).

  Args:
    report: the evaluation dict; top-level keys 'split', 'checkpoint_step',
      'classes' ({name: binary_metrics}), 'macro', possibly more (other scalar
      fields are listed in report.md).
    out_dir: the output directory.
    labels: (N, C) 0/1 labels the report was computed on (for the curves).
    scores: (N, C) scores.
    classes: the C class names, in column order.
    highlight: a class to draw bold with its operating points (the target
      pathology, e.g. 'Hernia'), or None.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  _check_shapes(labels, scores, classes)
  if highlight is not None and highlight not in classes:
    raise ValueError(f"highlight {highlight!r} is not one of the classes.")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2, default=_json_default)
    f.write("\n")
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(_markdown(report, classes=classes, num_examples=labels.shape[0], highlight=highlight))
  for kind in ("roc", "pr"):
    _plot_curves(kind=kind, report=report, labels=labels, scores=scores, classes=classes,
                 highlight=highlight, path=os.path.join(out_dir, f"{kind}.png"))
  np.savez(os.path.join(out_dir, SCORES_FILE), scores=scores.astype(np.float32), labels=labels.astype(np.uint8))

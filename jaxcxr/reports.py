"""Reports: the one function that builds a report dict, and the files, tables and plots made from it.

Every stage that reports on a split (the trainer's test report, `jaxcxr.evaluate`, the SMOTE and cRT heads)
calls `build_report` with the validation labels and scores (which choose the thresholds) and the reported
split's labels and scores; `write` puts it in a folder (report.json, report.md, roc.png, pr.png, scores.npz)
and `show` prints it. metrics.py holds the numbers; this module only assembles and draws them.
"""

import json
import os
from typing import Any, Mapping, Optional, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm
import numpy as np

from jaxcxr import metrics
from jaxcxr.data import nih


def build_report(config, *, step: int, val_labels, val_scores, labels, scores, split: str = "test",
                 val_patients=None, threshold_rule: Optional[str] = None, target_recall: Optional[float] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> dict:
  """The report of `scores` on `split`, thresholds chosen on validation.

  Args:
    config: the run's config (data.split, data.target, arm, seeds, train.threshold_rule).
    step: the checkpoint step the scores come from.
    val_labels, val_scores: (N_val, 14) validation labels and scores, which choose each class's threshold
      (and nothing else).
    labels, scores: (N, 14) labels and scores of the reported split.
    split: 'test' or 'val' (the report's 'split' is '<data.split>/<split>').
    val_patients: (N_val,) patient ids of the validation rows, to count them in 'validation'.
    threshold_rule, target_recall: default config.train.threshold_rule / target_recall.
    extra: more top-level fields (stage, calibration, intervals' settings, ...), placed before the metrics.

  Returns:
    {'split', 'checkpoint_step', 'target', 'arm', 'seed', 'split_seed', 'threshold_rule', ['target_recall'],
     'num_images', 'validation': {images, patients, target_images, target_auprc}, **extra,
     'classes': {name: metrics.binary_metrics + threshold}, 'macro'}. 'validation' says what chose the
     thresholds; its target_auprc is what the study compares arms by (test labels choose nothing).
  """
  rule = config.train.threshold_rule if threshold_rule is None else threshold_rule
  recall = float(config.train.target_recall if target_recall is None else target_recall)
  thresholds = metrics.select_thresholds(labels=val_labels, scores=val_scores, rule=rule, target_recall=recall)
  result = metrics.evaluate_scores(labels=labels, scores=scores, classes=nih.CLASSES, thresholds=thresholds)
  report = {"split": f"{config.data.split}/{split}", "checkpoint_step": int(step), "target": config.data.target,
            "arm": config.arm, "seed": int(config.seed), "threshold_rule": rule}
  if "split_seed" in config.data:
    report["split_seed"] = int(config.data.split_seed)
  if rule == "target_recall":
    report["target_recall"] = recall
  report["num_images"] = int(np.asarray(labels).shape[0])
  t = nih.CLASSES.index(config.data.target)
  val_labels = np.asarray(val_labels)
  report["validation"] = {
      "images": int(val_labels.shape[0]),
      "patients": None if val_patients is None else int(np.unique(np.asarray(val_patients)).size),
      "target_images": int((val_labels[:, t] > 0.5).sum()),
      "target_auprc": metrics.binary_metrics(labels=val_labels[:, t], scores=np.asarray(val_scores)[:, t],
                                             threshold=0.5)["auprc"]}
  report.update(extra or {})
  report.update(result)
  return report


def show(report: Mapping[str, Any], title: str, *, out_dir: Optional[str] = None, table: Optional[str] = None):
  """Prints `title` (and where the files went) and the report's table (or `table`, if given)."""
  print(f"\n{title}" + (f" -> {out_dir}" if out_dir else ""))
  print(format_table(report) if table is None else table)




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
  v = report.get("validation")
  if v:
    lines.append(f"- thresholds chosen on validation: {v['images']} images"
                 + (f", {v['patients']} patients" if v.get("patients") is not None else "")
                 + f", {v['target_images']} {report.get('target', 'target')} images")
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
  m = metrics.confusion_metrics(y, pred)
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
    y, s = metrics.as_binary(labels[:, c]), metrics.as_scores(scores[:, c])
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
      prevalence = float(metrics.as_binary(labels[:, list(classes).index(highlight)]).mean())
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
  points = [(threshold, "o", "red", "chosen threshold"), (metrics.FIXED_THRESHOLD, "s", "none", "threshold")]
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
# and `labels` (N, C) uint8, rows in the split's order, plus what `write`'s `arrays` adds (patients,
# validation labels, scores and patients). The study bootstraps them without re-predicting.
SCORES_FILE = "scores.npz"


def write(
    report: Mapping[str, Any],
    out_dir,
    *,
    labels,
    scores,
    classes: Sequence[str] = nih.CLASSES,
    highlight: Optional[str] = None,
    arrays: Optional[Mapping[str, Any]] = None,
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
    arrays: more arrays for SCORES_FILE, e.g. `patients` and the validation rows that chose the
      thresholds (`val_labels`, `val_scores`, `val_patients`), which the study's joint bootstrap resamples.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  metrics.check_shapes(labels, scores, classes)
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
  np.savez(os.path.join(out_dir, SCORES_FILE), scores=scores.astype(np.float32), labels=labels.astype(np.uint8),
           **{k: np.asarray(v) for k, v in (arrays or {}).items()})

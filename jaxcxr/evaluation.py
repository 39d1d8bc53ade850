"""Evaluation of a saved checkpoint: thresholds and calibration from validation, patient-bootstrap intervals.

The library behind `python -m jaxcxr.evaluate` (jaxcxr/evaluate.py holds its flags):

  python -m jaxcxr.evaluate --config=configs/demo.py --workdir=/tmp/jaxcxr_demo
  python -m jaxcxr.evaluate --workdir=/tmp/hernia --checkpoint=latest --split=test \
      --threshold_rule=target_recall --target_recall=0.9 --calibration=temperature --bootstrap_samples=2000

Without --config, the config the run was trained with (WORKDIR/config.json) is used. The checkpoint
(`best` by validation AUPRC of the target class, `latest`, or a step number) is restored, validation is
predicted to choose the per-class thresholds (and to fit the calibration), and the requested split is
scored with `metrics.evaluate_scores`. Every class gets 95% patient-bootstrap intervals for AUROC, AUPRC,
and recall and F1 at the validation threshold (which stays fixed inside the bootstrap). The report goes to
WORKDIR/eval/<checkpoint>-<split>/: report.json, report.md, roc.png, pr.png, scores.npz (and
reliability.png when calibrated).
"""

import os
from typing import Optional, Union

import jax
import ml_collections
import numpy as np

from jaxcxr import bootstrap
from jaxcxr import calibration as calibration_lib
from jaxcxr import errors
from jaxcxr import metrics as metrics_lib
from jaxcxr import model_context
from jaxcxr import reports
from jaxcxr import runfolder
from jaxcxr.data import nih

SPLITS = ("val", "test")
CI_METRICS = ("auroc", "auprc", "recall", "f1")
# Thresholded metrics whose joint validation + test bootstrap intervals re-choose the threshold.
JOINT_METRICS = ("recall", "precision", "f1")
class EvaluationError(errors.UserError):
  """The evaluation cannot run as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def _interval(ci):
  return None if ci is None else [float(ci[0]), float(ci[1])]


def _check_args(split, threshold_rule, target_recall, calibration, bootstrap_samples, alpha):
  if split not in SPLITS:
    raise EvaluationError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}.")
  if threshold_rule not in metrics_lib.THRESHOLD_RULES:
    raise EvaluationError(f"--threshold_rule must be one of {', '.join(metrics_lib.THRESHOLD_RULES)}, "
                          f"got {threshold_rule!r}.")
  if not 0.0 < target_recall <= 1.0:
    raise EvaluationError(f"--target_recall must be in (0, 1], got {target_recall}.")
  if calibration not in calibration_lib.METHODS:
    raise EvaluationError(f"--calibration must be one of {', '.join(calibration_lib.METHODS)}, "
                          f"got {calibration!r}.")
  if bootstrap_samples < 0:
    raise EvaluationError(f"--bootstrap_samples must be >= 0, got {bootstrap_samples}.")
  if not 0.0 < alpha < 1.0:
    raise EvaluationError(f"--alpha must be in (0, 1), got {alpha}.")


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    checkpoint: Union[str, int] = "best",
    split: str = "test",
    threshold_rule: Optional[str] = None,
    target_recall: Optional[float] = None,
    calibration: str = "none",
    bootstrap_samples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    out_dir: Optional[str] = None,
    reliability_class: Optional[str] = None,
    ctx: Optional[model_context.ModelContext] = None,
    progress: bool = True,
    verbose: bool = True,
) -> dict:
  """Evaluates one checkpoint of a run on `split`, writes the report and returns it.

  Args:
    config: the run's config (as trained; `load_workdir_config(workdir)` reads it back).
    workdir: the run's folder (holding checkpoints/).
    checkpoint: 'best' (by validation AUPRC of the target class), 'latest' or a step number.
    split: 'test' or 'val'.
    threshold_rule: how per-class thresholds are chosen on validation (metrics.THRESHOLD_RULES); default
      config.train.threshold_rule.
    target_recall: for threshold_rule 'target_recall'; default config.train.target_recall.
    calibration: 'none', 'temperature' or 'platt', fitted per class on validation; thresholds are
      then chosen on the calibrated validation scores and metrics use calibrated scores.
    bootstrap_samples: patient-bootstrap samples for the intervals (0: intervals are null).
    alpha: 1 - confidence level of the intervals.
    seed: seed of the bootstrap.
    out_dir: where the report goes; default WORKDIR/eval/<checkpoint>-<split>.
    reliability_class: the class of reliability.png (default config.data.target).
    ctx: a model context of this run already built, to reuse (default: built from the workdir).
    progress: show a progress bar over the bootstrap samples.
    verbose: print the table and the target class's intervals (process 0 only).

  Returns:
    The report: 'split', 'checkpoint_step', 'classes' ({name: metrics.binary_metrics plus auroc_ci,
    auprc_ci, recall_ci, f1_ci ([low, high] or None) and brier}), 'macro', 'threshold_rule',
    'calibration', 'bootstrap_samples' and more.

  Raises:
    EvaluationError: bad arguments.
    runfolder.RunFolderError, model_context.CheckpointError: no checkpoints, an absent step, or a config
      that does not fit the run.
    nih.DataError: the data cannot be read.
  """
  workdir = runfolder.path(workdir)
  threshold_rule = config.train.threshold_rule if threshold_rule is None else threshold_rule
  target_recall = float(config.train.target_recall if target_recall is None else target_recall)
  _check_args(split, threshold_rule, target_recall, calibration, bootstrap_samples, alpha)
  reliability_class = config.data.target if reliability_class is None else reliability_class
  if reliability_class not in nih.CLASSES:
    raise EvaluationError(f"Unknown class {reliability_class!r}; choose one of {', '.join(nih.CLASSES)}.")
  ctx = ctx or model_context.ModelContext.from_workdir(workdir, config)
  step, variables = ctx.restore(checkpoint)

  classes = list(nih.CLASSES)
  val = ctx.splits["val"]
  raw_val = np.asarray(ctx.predict_split(variables, val), np.float64)
  data = ctx.splits[split]
  raw = raw_val if split == "val" else np.asarray(ctx.predict_split(variables, data), np.float64)
  labels = data.meta.labels

  calibrator = calibration_lib.fit_calibrator(calibration, labels=val.meta.labels, probs=raw_val)
  val_scores, scores = calibrator.apply(raw_val), calibrator.apply(raw)
  report = reports.build_report(
      config, step=step, val_labels=val.meta.labels, val_scores=val_scores, labels=labels, scores=scores,
      split=split, val_patients=val.meta.patients, threshold_rule=threshold_rule, target_recall=target_recall,
      extra={"checkpoint": str(checkpoint), "calibration": calibration,
             "bootstrap_samples": int(bootstrap_samples), "bootstrap_unit": "patient",
             "confidence": 1.0 - alpha, "num_patients": int(np.unique(data.meta.patients).size)})
  thresholds = np.asarray([report["classes"][c]["threshold"] for c in classes])

  if bootstrap_samples:
    intervals = bootstrap.class_intervals(
        labels=labels, scores=scores, patients=data.meta.patients, thresholds=thresholds, classes=classes,
        metrics=CI_METRICS, num_samples=bootstrap_samples, alpha=alpha, seed=seed,
        progress=progress and jax.process_index() == 0)
  else:
    intervals = {name: {m: None for m in CI_METRICS} for name in classes}
  # Intervals that also carry the threshold's uncertainty: validation and test patients resampled together,
  # each class's threshold chosen again on every validation resample (test only: on validation the split
  # that chooses is the one scored).
  joint = None
  if bootstrap_samples and split == "test":
    joint = bootstrap.joint_threshold_intervals(
        val_labels=val.meta.labels, val_scores=val_scores, val_patients=val.meta.patients, test_labels=labels,
        test_scores=scores, test_patients=data.meta.patients, classes=classes, rule=report["threshold_rule"],
        target_recall=target_recall, metrics=JOINT_METRICS, num_samples=bootstrap_samples, alpha=alpha,
        seed=seed, progress=progress and jax.process_index() == 0)
  brier = calibration_lib.brier_scores(labels, scores)
  brier_raw = calibration_lib.brier_scores(labels, raw)
  for c, name in enumerate(classes):
    entry = report["classes"][name]
    for m in CI_METRICS:
      entry[f"{m}_ci"] = _interval(intervals[name][m])
    for m in JOINT_METRICS:
      entry[f"{m}_ci_joint"] = None if joint is None else _interval(joint[name][m])
    entry["brier"] = brier[c]
    if calibration != "none":
      entry["brier_uncalibrated"] = brier_raw[c]
  report["macro"]["brier"] = metrics_lib.mean_defined(brier)
  if calibration != "none":
    report["macro"]["brier_uncalibrated"] = metrics_lib.mean_defined(brier_raw)
  if calibration != "none":
    report["calibration_params"] = calibrator.params(classes)

  if jax.process_index() == 0:
    out_dir = out_dir or os.path.join(workdir, "eval", f"{checkpoint}-{split}")
    reports.write(report, out_dir, labels=labels, scores=scores, highlight=config.data.target)
    with open(os.path.join(out_dir, "report.md"), "a") as f:
      f.write(_markdown_intervals(report, classes))
    if calibration != "none":
      c = classes.index(reliability_class)
      calibration_lib.plot_reliability(
          os.path.join(out_dir, "reliability.png"), labels=labels[:, c], probs=raw[:, c],
          calibrated=scores[:, c], class_name=reliability_class, method=calibration,
          title=f"{report['split']}, checkpoint step {step}; {calibration} scaling fitted on validation")
    if verbose:
      reports.show(report, f"Evaluation ({report['split']}, checkpoint step {step} ({checkpoint}), thresholds "
                   f"by {report['threshold_rule']} on validation, calibration {calibration})", out_dir=out_dir)
      print(format_intervals(report, config.data.target))
  return report


def _fmt_ci(value, ci, spec=".3f"):
  point = "n/a" if value is None else format(value, spec)
  return point if ci is None else f"{point} [{ci[0]:{spec}}, {ci[1]:{spec}}]"


def format_intervals(report: dict, name: str) -> str:
  """One line of the class's point estimates with their bootstrap intervals."""
  m = report["classes"][name]
  level = round(100 * report.get("confidence", 0.95))
  head = (f"{name}: {m['n_pos']} positives in {report.get('num_images', m['n'])} images, "
          f"{report.get('num_patients', '?')} patients; {level}% patient-bootstrap intervals "
          f"({report.get('bootstrap_samples', 0)} samples)")
  parts = [f"AUROC {_fmt_ci(m['auroc'], m['auroc_ci'])}", f"AUPRC {_fmt_ci(m['auprc'], m['auprc_ci'])}",
           f"recall {_fmt_ci(m['recall'], m['recall_ci'])} and F1 {_fmt_ci(m['f1'], m['f1_ci'])} at threshold "
           f"{m['threshold']:.4g} (held fixed)"]
  if m.get("recall_ci_joint") is not None or m.get("f1_ci_joint") is not None:
    parts.append(f"recall {_fmt_ci(m['recall'], m.get('recall_ci_joint'))}, precision "
                 f"{_fmt_ci(m['precision'], m.get('precision_ci_joint'))} and F1 "
                 f"{_fmt_ci(m['f1'], m.get('f1_ci_joint'))} with the threshold re-chosen on each validation "
                 "resample (joint bootstrap: includes the threshold's uncertainty)")
  if m.get("brier") is not None:
    parts.append(f"Brier {m['brier']:.4f}" + (f" (uncalibrated {m['brier_uncalibrated']:.4f})"
                                              if m.get("brier_uncalibrated") is not None else ""))
  return head + ":\n  " + "\n  ".join(parts)


def _markdown_intervals(report: dict, classes) -> str:
  level = round(100 * report["confidence"])
  calibrated = report["calibration"] != "none"
  lines = ["", f"## {level}% intervals ({report['bootstrap_samples']} patient-bootstrap samples of "
           f"{report['num_patients']} patients)", "",
           "Percentile intervals. Recall and F1 at the fixed validation threshold; 'joint' re-chooses the "
           "threshold on every resample of validation patients (resampled with the test patients), so it "
           "also carries the threshold's uncertainty. Brier on the reported scores"
           + (" (before calibration in brackets)." if calibrated else "."), "",
           "| class | AUROC | AUPRC | recall | F1 | recall (joint) | F1 (joint) | Brier |",
           "|:--|--:|--:|--:|--:|--:|--:|--:|"]
  for name in classes:
    m = report["classes"][name]
    label = f"**{name}**" if name == report.get("target") else name
    brier = "n/a" if m["brier"] is None else f"{m['brier']:.4f}"
    if calibrated and m.get("brier_uncalibrated") is not None:
      brier += f" ({m['brier_uncalibrated']:.4f})"
    cells = [_fmt_ci(m[k], m[f"{k}_ci"]) for k in CI_METRICS]
    cells += [_fmt_ci(m[k], m.get(f"{k}_ci_joint")) for k in ("recall", "f1")]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {brier} |")
  return "\n".join(lines) + "\n"

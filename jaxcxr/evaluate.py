"""Evaluates a saved checkpoint: thresholds and calibration from validation, patient-bootstrap intervals.

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

import json
import os
from typing import Optional, Union

from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from jaxcxr import bootstrap
from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr import calibration as calibration_lib
from jaxcxr import errors
from jaxcxr import metrics as metrics_lib
from jaxcxr import train
from jaxcxr.data import nih

SPLITS = ("val", "test")
CI_METRICS = ("auroc", "auprc", "recall", "f1")
# Fields that must match the training run for its checkpoints to restore into this config's model.
_MUST_MATCH = ("model.name", "data.image_size")
# Fields that change which images are in each split: a mismatch is warned about.
_SHOULD_MATCH = ("seed", "data.source", "data.split", "data.val_fraction", "data.phantom.num_images",
                 "data.phantom.hernia_prevalence", "data.phantom.label_noise", "data.phantom.seed")


class EvaluationError(errors.UserError):
  """The evaluation cannot run as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------
# Config and checkpoint.
# ----------------------------------------------------------------------------


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run wrote to WORKDIR/config.json, locked like a --config file's."""
  path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "config.json")
  if not os.path.exists(path):
    raise EvaluationError(f"{path} not found: pass --config (the config the run was trained with, with the "
                          "same overrides).")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.lock()
  return config


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      return None
  return node


def check_config(config, workdir: str) -> None:
  """Compares `config` with the run's WORKDIR/config.json (if present): errors on model differences,
  warns on data differences (they would change the splits)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  differ = lambda keys: [(k, _get(saved, k), _get(config, k)) for k in keys
                         if _get(saved, k) is not None and _get(saved, k) != _get(config, k)]
  bad = differ(_MUST_MATCH)
  if bad:
    raise EvaluationError(
        "The config does not match the one this run was trained with (" + path + "): "
        + "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in bad)
        + ". Pass the training config and overrides, or leave out --config to use config.json.")
  for k, a, b in differ(_SHOULD_MATCH):
    logging.warning("%s was %r in training, now %r: the splits may differ from the run's.", k, a, b)


def _has_checkpoints(directory: str) -> bool:
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def resolve_checkpoint(manager, checkpoint: Union[str, int] = "best") -> int:
  """The step that `checkpoint` ('best', 'latest' or a step number) names in an Orbax CheckpointManager.

  Raises:
    EvaluationError: no checkpoints, no ranked checkpoint for 'best', a malformed spec, or an absent step;
      the message lists the available steps.
  """
  steps = sorted(int(s) for s in manager.all_steps())
  directory = manager.directory
  if not steps:
    raise EvaluationError(f"No checkpoints in {directory}: train first (python -m jaxcxr.main).")
  best, latest = manager.best_step(), manager.latest_step()
  available = (f"available steps: {', '.join(map(str, steps))} "
               f"(best: {'none ranked' if best is None else best}, latest: {latest})")
  spec = str(checkpoint).strip()
  if spec == "best":
    if best is None:
      raise EvaluationError(f"No checkpoint in {directory} has validation metrics to rank it; use "
                            f"--checkpoint=latest or a step. {available[0].upper()}{available[1:]}.")
    return int(best)
  if spec == "latest":
    return int(latest)
  try:
    step = int(spec)
  except ValueError:
    raise EvaluationError(f"--checkpoint must be 'best', 'latest' or a step number, got {spec!r}; "
                          f"{available}.") from None
  if step not in steps:
    raise EvaluationError(f"No checkpoint at step {step} in {directory}; {available}.")
  return step


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def _eval_config(config):
  """A copy of `config` fit for evaluation on the devices at hand.

  The restored state replaces every parameter, so ImageNet initial weights (model.init_from) are not
  loaded; batch sizes are rounded up to a multiple of the device count (evaluation pads the last batch
  and BatchNorm runs in inference mode, so predictions do not depend on the batch size).
  """
  config = config.copy_and_resolve_references()
  config.model.init_from = ""
  n = jax.device_count()
  t = config.train
  for field in ("batch_size", "eval_batch_size"):
    value = t[field]
    if value and value % n:
      t[field] = -(-value // n) * n
      logging.info("train.%s %d -> %d, a multiple of the %d devices.", field, value, t[field], n)
  return config


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
    trainer: Optional[train.Trainer] = None,
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
    trainer: a `train.Trainer(config, workdir)` already built, to reuse.
    progress: show a progress bar over the bootstrap samples.
    verbose: print the table and the target class's intervals (process 0 only).

  Returns:
    The report: 'split', 'checkpoint_step', 'classes' ({name: metrics.binary_metrics plus auroc_ci,
    auprc_ci, recall_ci, f1_ci ([low, high] or None) and brier}), 'macro', 'threshold_rule',
    'calibration', 'bootstrap_samples' and more.

  Raises:
    EvaluationError: bad arguments, no checkpoints, an absent step, or a config that does not fit the run.
    nih.DataError: the data cannot be read.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  threshold_rule = config.train.threshold_rule if threshold_rule is None else threshold_rule
  target_recall = float(config.train.target_recall if target_recall is None else target_recall)
  _check_args(split, threshold_rule, target_recall, calibration, bootstrap_samples, alpha)
  reliability_class = config.data.target if reliability_class is None else reliability_class
  if reliability_class not in nih.CLASSES:
    raise EvaluationError(f"Unknown class {reliability_class!r}; choose one of {', '.join(nih.CLASSES)}.")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if trainer is None:
    if not _has_checkpoints(ckpt_dir):
      raise EvaluationError(f"No checkpoints in {ckpt_dir}: train first (python -m jaxcxr.main "
                            f"--config=... --workdir={workdir}), or point --workdir at a trained run.")
    check_config(config, workdir)
    trainer = train.Trainer(_eval_config(config), workdir)
  step = resolve_checkpoint(trainer.ckpt, checkpoint)
  try:
    state = trainer.restore(step)
  except Exception as e:  # pylint: disable=broad-except
    raise EvaluationError(f"Could not restore step {step} from {trainer.ckpt.directory} into "
                          f"model.name={config.model.name!r} at data.image_size={config.data.image_size}; "
                          f"is this the config the run was trained with? ({type(e).__name__}: {e})") from e

  classes = list(nih.CLASSES)
  val = trainer.splits["val"]
  raw_val = np.asarray(trainer.predict(state, val), np.float64)
  data = trainer.splits[split]
  raw = raw_val if split == "val" else np.asarray(trainer.predict(state, data), np.float64)
  labels = data.meta.labels

  calibrator = calibration_lib.fit_calibrator(calibration, labels=val.meta.labels, probs=raw_val)
  val_scores, scores = calibrator.apply(raw_val), calibrator.apply(raw)
  thresholds = metrics_lib.select_thresholds(labels=val.meta.labels, scores=val_scores, rule=threshold_rule,
                                             target_recall=target_recall)
  result = metrics_lib.evaluate_scores(labels=labels, scores=scores, classes=classes, thresholds=thresholds)

  if bootstrap_samples:
    intervals = bootstrap.class_intervals(
        labels=labels, scores=scores, patients=data.meta.patients, thresholds=thresholds, classes=classes,
        metrics=CI_METRICS, num_samples=bootstrap_samples, alpha=alpha, seed=seed,
        progress=progress and jax.process_index() == 0)
  else:
    intervals = {name: {m: None for m in CI_METRICS} for name in classes}
  brier = calibration_lib.brier_scores(labels, scores)
  brier_raw = calibration_lib.brier_scores(labels, raw)
  for c, name in enumerate(classes):
    entry = result["classes"][name]
    for m in CI_METRICS:
      entry[f"{m}_ci"] = _interval(intervals[name][m])
    entry["brier"] = brier[c]
    if calibration != "none":
      entry["brier_uncalibrated"] = brier_raw[c]
  result["macro"]["brier"] = metrics_lib.mean_defined(brier)
  if calibration != "none":
    result["macro"]["brier_uncalibrated"] = metrics_lib.mean_defined(brier_raw)

  report = {
      "split": f"{config.data.split}/{split}",
      "checkpoint_step": int(step),
      "checkpoint": str(checkpoint),
      "target": config.data.target,
      "arm": config.arm,
      "threshold_rule": threshold_rule,
      **({"target_recall": target_recall} if threshold_rule == "target_recall" else {}),
      "calibration": calibration,
      "bootstrap_samples": int(bootstrap_samples),
      "bootstrap_unit": "patient",
      "confidence": 1.0 - alpha,
      "num_images": len(data),
      "num_patients": int(np.unique(data.meta.patients).size),
      **result,
  }
  if calibration != "none":
    report["calibration_params"] = calibrator.params(classes)

  if jax.process_index() == 0:
    out_dir = out_dir or os.path.join(workdir, "eval", f"{checkpoint}-{split}")
    metrics_lib.write_report(report, out_dir, labels=labels, scores=scores, classes=classes,
                             highlight=config.data.target)
    with open(os.path.join(out_dir, "report.md"), "a") as f:
      f.write(_markdown_intervals(report, classes))
    if calibration != "none":
      c = classes.index(reliability_class)
      calibration_lib.plot_reliability(
          os.path.join(out_dir, "reliability.png"), labels=labels[:, c], probs=raw[:, c],
          calibrated=scores[:, c], class_name=reliability_class, method=calibration,
          title=f"{report['split']}, checkpoint step {step}; {calibration} scaling fitted on validation")
    if verbose:
      print(f"\nEvaluation ({report['split']}, checkpoint step {step} ({checkpoint}), thresholds by "
            f"{threshold_rule} on validation, calibration {calibration}) -> {out_dir}")
      print(metrics_lib.format_table(report))
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
           f"{m['threshold']:.4g}"]
  if m.get("brier") is not None:
    parts.append(f"Brier {m['brier']:.4f}" + (f" (uncalibrated {m['brier_uncalibrated']:.4f})"
                                              if m.get("brier_uncalibrated") is not None else ""))
  return head + ":\n  " + "\n  ".join(parts)


def _markdown_intervals(report: dict, classes) -> str:
  level = round(100 * report["confidence"])
  calibrated = report["calibration"] != "none"
  lines = ["", f"## {level}% intervals ({report['bootstrap_samples']} patient-bootstrap samples of "
           f"{report['num_patients']} patients)", "",
           "Percentile intervals; recall and F1 at the fixed validation threshold. Brier on the reported "
           "scores" + (" (before calibration in brackets)." if calibrated else "."), "",
           "| class | AUROC | AUPRC | recall | F1 | Brier |", "|:--|--:|--:|--:|--:|--:|"]
  for name in classes:
    m = report["classes"][name]
    label = f"**{name}**" if name == report.get("target") else name
    brier = "n/a" if m["brier"] is None else f"{m['brier']:.4f}"
    if calibrated and m.get("brier_uncalibrated") is not None:
      brier += f" ({m['brier_uncalibrated']:.4f})"
    cells = [_fmt_ci(m[k], m[f"{k}_ci"]) for k in CI_METRICS]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {brier} |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command-line flags. Called only when run as a program, so that importing this module
  next to jaxcxr.main (which defines --config and --workdir too) does not clash."""
  flags.DEFINE_string("workdir", None, "The training run's folder (holding checkpoints/ and config.json).")
  config_flags.DEFINE_config_file(
      "config", None, "The run's config file and arm, with the overrides it was trained with "
      "(e.g. configs/hernia.py:focal --config.data.dir=...). Default: WORKDIR/config.json.", lock_config=True)
  flags.DEFINE_string("checkpoint", "best", "'best' (validation AUPRC of the target), 'latest' or a step number.")
  flags.DEFINE_enum("split", "test", SPLITS, "The split to evaluate.")
  flags.DEFINE_enum("threshold_rule", None, metrics_lib.THRESHOLD_RULES,
                    "Threshold rule on validation (default: the config's train.threshold_rule).")
  flags.DEFINE_float("target_recall", None, "Recall for --threshold_rule=target_recall (default: the config's).")
  flags.DEFINE_enum("calibration", "none", calibration_lib.METHODS, "Per-class calibration fitted on validation.")
  flags.DEFINE_integer("bootstrap_samples", 1000, "Patient-bootstrap samples for the intervals (0: none).")
  flags.DEFINE_float("alpha", 0.05, "1 - confidence level of the intervals.")
  flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap.")
  flags.DEFINE_string("out_dir", None, "Report folder (default: WORKDIR/eval/<checkpoint>-<split>).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  cli.start(argv)
  with cli.user_errors("jaxcxr.evaluate", nih.DataError, EvaluationError, calibration_lib.CalibrationError):
    config = FLAGS.config if FLAGS.config is not None else load_workdir_config(FLAGS.workdir)
    config_check.check(config)
    evaluate_checkpoint(config, FLAGS.workdir, checkpoint=FLAGS.checkpoint, split=FLAGS.split,
                        threshold_rule=FLAGS.threshold_rule, target_recall=FLAGS.target_recall,
                        calibration=FLAGS.calibration, bootstrap_samples=FLAGS.bootstrap_samples,
                        alpha=FLAGS.alpha, seed=FLAGS.bootstrap_seed, out_dir=FLAGS.out_dir)


if __name__ == "__main__":
  define_flags()
  cli.run(main, "jaxcxr.evaluate")

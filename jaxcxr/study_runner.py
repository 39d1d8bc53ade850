"""The imbalance study: every arm of a config, over several seeds, compared on the target class.

The library behind `python -m jaxcxr.study` (jaxcxr/study.py holds its flags):

  python -m jaxcxr.study --config=configs/demo.py:quick --workdir=/tmp/jaxcxr_study
  python -m jaxcxr.study --config=configs/hernia.py --config.data.dir=/data/chestxray14 --workdir=/tmp/hernia_study
  python -m jaxcxr.study --config=configs/demo.py:quick --workdir=/tmp/s --arms=baseline,focal --seeds=1

The config string names no arm (its modifiers, e.g. `quick`, are kept); the study adds each arm of
`jaxcxr/arms.py` in turn (or those of --arms) and trains it, in this process and one after another, in
WORKDIR/<arm>/seed<s>/ with config.seed = s (s = config.seed, config.seed + 1, ...; the data, including
the phantom's generator seed, stay the same for every run, and so do the splits, which follow
data.split_seed only). --config.FIELD=VALUE overrides apply to every run. A rerun skips
runs whose final report exists (WORKDIR/<arm>/seed<s>/report/report.json, or smote/report.json for SMOTE
arms) and resumes unfinished ones from their checkpoints.

Then, for each arm, the target class's recall, precision and F1 (at the threshold chosen on validation),
AUROC and AUPRC, and the macro AUROC over the 14 classes: mean over seeds, seed spread (standard
deviation, min and max), and a 95% patient-bootstrap interval of the seed mean (the test patients are
resampled with replacement; every seed is scored on the same resamples, and the metric averaged over
seeds per resample). The interval speaks for test-set sampling, the spread for training randomness.

Test scores for the bootstrap come from REPORT_DIR/scores.npz, which every report written by
reports.write holds (array `scores`, (N, 14), in test-split order); for older runs without it the study
restores the run's best checkpoint once, predicts the
test split and keeps the scores in WORKDIR/<arm>/seed<s>/study/test_scores.npz (seconds per run; the
compiled steps come from a persistent compilation cache in WORKDIR/xla_cache). A SMOTE arm without saved
scores keeps the intervals of its own report, if any.

Writes WORKDIR/study.md (the table and how to read it), study.csv (one row per arm), study_runs.csv (one
row per run), study.json and study.png (target-class recall, F1 and AUPRC per arm with 95% intervals and
the seeds as dots).
"""

import csv
import dataclasses
import importlib.util
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
import numpy as np

from jaxcxr import arms as arms_lib
from jaxcxr import bootstrap
from jaxcxr import difficulty
from jaxcxr import errors
from jaxcxr import experiment
from jaxcxr import head_stages
from jaxcxr import model_context
from jaxcxr import reports
from jaxcxr import runfolder
from jaxcxr.data import datasets
from jaxcxr.data import nih
from jaxcxr.data import phantom

# The target class's metrics the study compares, then the macro AUROC over the 14 classes.
TARGET_METRICS = ("recall", "precision", "f1", "auroc", "auprc")
METRICS = TARGET_METRICS + ("macro_auroc",)
LABELS = {"recall": "recall", "precision": "precision", "f1": "F1", "auroc": "AUROC", "auprc": "AUPRC",
          "macro_auroc": "macro AUROC (14)"}
# Seeds per arm when --seeds is not given: one for a `quick` config string (every arm in under 30 minutes
# on 2 CPU cores; --seeds=2 adds the seed spread in about twice the time).
DEFAULT_SEEDS, QUICK_SEEDS = 3, 1
SCORES_FILE = "test_scores.npz"


class StudyError(errors.UserError):
  """The study cannot run as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------
# Configs of the arms.
# ----------------------------------------------------------------------------


def load_config_module(path: str):
  """The Python module of a config file (e.g. configs/demo.py), loaded from its path."""
  if not os.path.isfile(path):
    raise StudyError(f"Config file {path} not found (run from the repository root, e.g. "
                     "--config=configs/demo.py:quick).")
  spec = importlib.util.spec_from_file_location(f"jaxcxr_study_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise StudyError(f"{path} has no get_config(arg).")
  return module


def config_factory(config_string: str, overrides: Optional[dict] = None) -> Callable[[str], ml_collections.ConfigDict]:
  """A function arm -> locked config: the config file's get_config with the arm added to the config string
  (`configs/demo.py:quick` + 'focal' -> get_config('quick,focal')), then the --config overrides."""
  path, _, arg = config_string.partition(":")
  named = [t for t in arms_lib.config_tokens(arg) if t in arms_lib.ARMS]
  if named:
    raise StudyError(f"The study runs every arm; drop {named[0]!r} from --config={config_string} (use "
                     f"--arms={named[0]} to run that arm only).")
  module = load_config_module(path)
  if not getattr(module, "TAKES_ARMS", True):  # E.g. configs/chexnet.py: one fixed recipe, nothing to compare.
    raise StudyError(f"{path} is one fixed recipe without arms; the study needs a config with arms, such as "
                     "configs/demo.py, configs/hernia.py or configs/pneumothorax.py.")
  overrides = dict(overrides or {})

  def make(arm: str) -> ml_collections.ConfigDict:
    config = module.get_config(",".join(arms_lib.config_tokens(arg) + [arm]))
    config.update_from_flattened_dict(overrides)
    return config

  return make


def default_seeds(config_string: str) -> int:
  """Seeds per arm when --seeds is not given: QUICK_SEEDS for a `quick` config string, else DEFAULT_SEEDS."""
  _, _, arg = config_string.partition(":")
  return QUICK_SEEDS if "quick" in arms_lib.config_tokens(arg) else DEFAULT_SEEDS


def select_arms(requested: Optional[Sequence[str]] = None) -> List[str]:
  """The arms to run: `requested` (checked against arms.ARMS, in the given order) or all of arms.ARMS."""
  if not requested:
    return list(arms_lib.ARMS)
  unknown = [a for a in requested if a not in arms_lib.ARMS]
  if unknown:
    raise StudyError(f"Unknown arm(s) {', '.join(map(repr, unknown))}; choose among {', '.join(arms_lib.ARMS)}.")
  return list(dict.fromkeys(requested))


# ----------------------------------------------------------------------------
# Runs.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  arm: str
  seed: int
  workdir: str
  config: ml_collections.ConfigDict

  @property
  def report_path(self) -> str:
    return os.path.join(experiment.report_dir(self.config, self.workdir), "report.json")

  @property
  def finished(self) -> bool:
    return os.path.exists(self.report_path)

  @property
  def name(self) -> str:
    return f"{self.arm} seed {self.seed}"


def plan_runs(make_config: Callable[[str], ml_collections.ConfigDict], *, arms: Sequence[str],
              num_seeds: int, workdir: str) -> List[Run]:
  """One Run per (arm, seed): seeds config.seed .. config.seed + num_seeds - 1, in WORKDIR/<arm>/seed<s>."""
  if num_seeds < 1:
    raise StudyError(f"--seeds must be at least 1, got {num_seeds}.")
  runs = []
  for arm in arms:
    base_seed = make_config(arm).seed
    for k in range(num_seeds):
      config = make_config(arm)
      config.seed = base_seed + k
      runs.append(Run(arm, config.seed, os.path.join(workdir, arm, f"seed{config.seed}"), config))
  return runs


def config_differences(run: Run) -> List[str]:
  """Fields where the run's saved WORKDIR/config.json differs from the config the study would use now."""
  path = os.path.join(run.workdir, "config.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = runfolder.flatten(json.load(f))
  now = runfolder.flatten(json.loads(run.config.to_json_best_effort()))
  return [f"{k}: {saved[k]!r} then, {now[k]!r} now" for k in sorted(saved.keys() & now.keys())
          if saved[k] != now[k]]


def execute(runs: Sequence[Run], *, train_fn: Callable = experiment.run, out=sys.stdout) -> int:
  """Trains every unfinished run with train_fn(config, workdir), skipping finished ones; returns how many
  were trained. A run whose saved config differs from the study's is an error (mixing would be silent)."""
  trained = 0
  for i, run in enumerate(runs, 1):
    head = f"[{i}/{len(runs)}] {run.name}"
    diff = config_differences(run)
    if diff:
      raise StudyError(f"{run.workdir} was trained with another config ({'; '.join(diff[:5])}"
                       f"{'; ...' if len(diff) > 5 else ''}). Use a new --workdir, or delete that folder to "
                       "retrain it.")
    if run.finished:
      print(f"{head}: finished earlier ({os.path.relpath(run.report_path, os.path.dirname(os.path.dirname(run.workdir)))}), skipped.",
            file=out, flush=True)
      continue
    resumed = os.path.isdir(os.path.join(run.workdir, "checkpoints"))
    print(f"{head}: {'resuming' if resumed else 'training'} in {run.workdir}", file=out, flush=True)
    train_fn(run.config, run.workdir)
    trained += 1
    if not run.finished:
      raise StudyError(f"{run.name} ended without writing {run.report_path}.")
  return trained


# ----------------------------------------------------------------------------
# Test scores and the bootstrap.
# ----------------------------------------------------------------------------


def _load_report(run: Run) -> dict:
  with open(run.report_path) as f:
    report = json.load(f)
  missing = [c for c in nih.CLASSES if c not in report.get("classes", {})]
  if missing or "macro" not in report:
    raise StudyError(f"{run.report_path} is not a full test report (missing {', '.join(missing) or 'macro'}); "
                     "delete the run folder to retrain it.")
  return report


class _SplitCache:
  """Loaded data splits, shared by runs whose data settings and seed agree (loading is not free)."""

  def __init__(self):
    self._splits = {}

  def get(self, config):
    key = json.dumps(runfolder.flatten(json.loads(config.data.to_json_best_effort())), sort_keys=True) + f"|{config.seed}"
    if key not in self._splits:
      self._splits[key] = datasets.load_splits(config)
    return self._splits[key]


def predict_test(run: Run, step: int, *, splits) -> np.ndarray:
  """(N, 14) test probabilities of the run's checkpoint `step` (its best, which made the report)."""
  ctx = model_context.ModelContext(run.config, run.workdir, splits=splits)
  return np.asarray(ctx.predict_split(ctx.restore_step(step), splits["test"]), np.float64)


def load_test_scores(run: Run, report: dict, *, splits_cache: _SplitCache) -> Optional[dict]:
  """{'scores', 'labels', 'patients'} of the run's test split, or None when they cannot be had (a SMOTE
  arm that saved no scores). Cached in WORKDIR/<arm>/seed<s>/study/test_scores.npz."""
  cache = os.path.join(run.workdir, "study", SCORES_FILE)
  if os.path.exists(cache):
    with np.load(cache) as z:
      return {k: z[k] for k in z.files}
  saved = os.path.join(experiment.report_dir(run.config, run.workdir), reports.SCORES_FILE)
  validation = {}
  if not os.path.exists(saved) and head_stages.is_smote(run.config):
    return None
  splits = splits_cache.get(run.config)
  test = splits["test"]
  if os.path.exists(saved):
    with np.load(saved) as z:
      scores = np.asarray(z["scores"], np.float64)
      if "val_scores" in z.files:
        validation = {k: z[k] for k in ("val_labels", "val_scores", "val_patients")}
  else:
    scores = predict_test(run, int(report["checkpoint_step"]), splits=splits)
  if scores.shape != test.meta.labels.shape:
    raise StudyError(f"{run.name}: {scores.shape} test scores for a test split of {test.meta.labels.shape}.")
  # The scores must reproduce the report (same checkpoint, same split); otherwise the intervals would
  # describe something else.
  t = nih.CLASSES.index(report["target"])
  auroc, reported = bootstrap.auroc(test.meta.labels[:, t], scores[:, t]), report["classes"][report["target"]]["auroc"]
  if (auroc is None) != (reported is None) or (auroc is not None and abs(auroc - reported) > 1e-3):
    raise StudyError(f"{run.name}: the test scores give {report['target']} AUROC {auroc}, the report "
                     f"{reported}; delete {run.workdir}/study/ and the report to redo the run.")
  out = {"scores": scores, "labels": np.asarray(test.meta.labels), "patients": np.asarray(test.meta.patients),
         **validation}
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.savez_compressed(cache, **out)
  return out


THRESHOLDED = ("recall", "precision", "f1")


def run_bootstrap(*, labels, scores, patients, thresholds, target: str, num_samples: int, seed: int = 0,
                  validation: Optional[dict] = None, rule: str = "max_f1", target_recall: float = 0.9) -> np.ndarray:
  """(len(METRICS), num_samples) patient-bootstrap values of the study's metrics for one run.

  Recall, precision and F1: with `validation` ({'val_labels', 'val_scores', 'val_patients'}), a joint
  bootstrap that resamples validation patients too and re-chooses the threshold (`rule`) on each resample,
  so the interval carries the threshold's uncertainty; without it, at the run's fixed validation threshold.
  The test resamples are the same either way (and for every run with this seed). The macro AUROC of a
  sample is the mean over the classes where it is defined on that sample. NaN where undefined.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  t = nih.CLASSES.index(target)
  jobs = [(bootstrap.get_metric(m, threshold=float(thresholds[t])), labels[:, t], scores[:, t])
          for m in TARGET_METRICS]
  jobs += [(bootstrap.AUROC, labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
  values = bootstrap.bootstrap_values(jobs, groups=patients, num_samples=num_samples, seed=seed)
  if validation is not None:
    joint, _ = bootstrap.joint_threshold_values(
        val_labels=np.asarray(validation["val_labels"])[:, t:t + 1],
        val_scores=np.asarray(validation["val_scores"])[:, t:t + 1], val_patients=validation["val_patients"],
        test_labels=labels[:, t:t + 1], test_scores=scores[:, t:t + 1], test_patients=patients, rule=rule,
        target_recall=target_recall, metrics=THRESHOLDED, num_samples=num_samples, seed=seed)
    for i, m in enumerate(THRESHOLDED):
      values[TARGET_METRICS.index(m)] = joint[i, 0]
  per_class = values[len(TARGET_METRICS):]
  defined = np.isfinite(per_class)
  macro = np.where(defined.any(0), np.nansum(per_class, 0) / np.maximum(defined.sum(0), 1), np.nan)
  return np.concatenate([values[:len(TARGET_METRICS)], macro[None]], 0)


def control_rows(config, target: str, workdir: str, *, out=sys.stdout) -> List[dict]:
  """The no-learning controls of the phantom data (jaxcxr/difficulty.py) for the study table: what an arm
  must beat. Computed once per study (WORKDIR/controls.json); none for real data, where they would read
  every image again (run `python -m jaxcxr.phantom --difficulty` on a folder of your own instead)."""
  if config.data.source != "phantom":
    return []
  cache = os.path.join(workdir, "controls.json")
  if os.path.exists(cache):
    with open(cache) as f:
      results = json.load(f)
  else:
    print("Computing the no-learning controls on the phantom data...", file=out, flush=True)
    results = difficulty.controls_for_folder(datasets.data_dir(config), findings=[target],
                                             clean_label_file=phantom.CLEAN_LABEL_FILE)
    if jax.process_index() == 0:
      with open(cache, "w") as f:
        json.dump(results, f, indent=2, default=float)
  return [{**row, "name": row["arm"].replace("control: ", "")} for row in difficulty.control_rows(results, target=target)]


def choose_arm(summary: dict) -> Optional[str]:
  """The arm with the highest mean over seeds of the target's validation AUPRC (validation chooses; test
  is only reported). None when no arm has it."""
  scored = {arm: s["val_auprc"]["mean"] for arm, s in summary.items() if s["val_auprc"]["mean"] is not None}
  return max(scored, key=scored.get) if scored else None


def data_description(report: dict, config) -> str:
  """What the study ran on, in words: the phantom (synthetic) or NIH ChestX-ray14, and the split."""
  source = config.data.source
  name = {"phantom": "the built-in synthetic phantom (claims from it hold for the phantom only)",
          "nih": "NIH ChestX-ray14", "chestmnist": "MedMNIST's ChestMNIST (NIH images, no patient ids)"}.get(
              source, source)
  return f"{name}, split {report['split']} (data.split_seed {report.get('split_seed', 0)})"


# ----------------------------------------------------------------------------
# Aggregation (pure).
# ----------------------------------------------------------------------------


def run_values(report: dict) -> Dict[str, Optional[float]]:
  """The study's metrics of one run's report: the target class's and the macro AUROC (None: undefined)."""
  target = report["classes"][report["target"]]
  values = {m: target.get(m) for m in TARGET_METRICS}
  values["macro_auroc"] = report["macro"].get("auroc")
  return values


def spread(values: Sequence[Optional[float]]) -> dict:
  """Mean, sample standard deviation (None for one value), min and max of the defined values, and n."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
          "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def summarize_arm(reports: Sequence[dict], *, boot: Optional[Sequence[np.ndarray]] = None,
                  alpha: float = 0.05) -> dict:
  """Per metric: spread over the runs (seeds) and a (1 - alpha) interval.

  Args:
    reports: the test reports of the arm's runs (one per seed).
    boot: per run, its `run_bootstrap` values (len(METRICS), B), all on the same resamples; None (or any
      run None) when scores are missing, in which case a single run's own report intervals (`<m>_ci`) are
      used where it has them.
    alpha: 1 - confidence level.

  Returns:
    {metric: {'mean', 'std', 'min', 'max', 'n', 'values' (per run), 'ci' ([low, high] or None),
    'ci_source' ('patient bootstrap', 'report' or None)}}.
  """
  out = {}
  have_boot = boot is not None and len(boot) == len(reports) and all(b is not None for b in boot)
  stacked = np.stack(boot) if have_boot else None  # (runs, metrics, B)
  for j, m in enumerate(METRICS):
    values = [run_values(r)[m] for r in reports]
    entry = {**spread(values), "values": values, "ci": None, "ci_source": None}
    if have_boot:
      # The seed mean on each resample; NaN (skipped) where a seed's metric is undefined on it.
      ci = bootstrap.percentile_interval(stacked[:, j, :].mean(0), alpha=alpha)
      if ci is not None:
        entry["ci"], entry["ci_source"] = [ci[0], ci[1]], "patient bootstrap"
    elif len(reports) == 1 and m in TARGET_METRICS:
      ci = reports[0]["classes"][reports[0]["target"]].get(f"{m}_ci")
      if ci is not None:
        entry["ci"], entry["ci_source"] = [float(ci[0]), float(ci[1])], "report"
    out[m] = entry
  val = [r.get("validation", {}).get("target_auprc") for r in reports]
  out["val_auprc"] = {**spread(val), "values": val, "ci": None, "ci_source": None}
  return out


# ----------------------------------------------------------------------------
# Outputs.
# ----------------------------------------------------------------------------


def _f(x, spec=".3f"):
  return "n/a" if x is None else format(x, spec)


def format_cell(entry: dict) -> str:
  """'mean ±sd [low, high]' (sd only with 2+ seeds, interval only when known)."""
  cell = _f(entry["mean"])
  if entry.get("std") is not None:
    cell += f" ±{entry['std']:.3f}"
  if entry.get("ci") is not None:
    cell += f" [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"
  return cell


def csv_rows(summary: dict, info: dict) -> List[dict]:
  """One row per arm: seeds, test positives, and per metric mean, std, min, max, ci_low, ci_high."""
  rows = []
  for arm, s in summary.items():
    row = {"arm": arm, "target": info["target"], "split": info["split"], "runs": len(info["seeds"][arm]),
           "seeds": " ".join(map(str, info["seeds"][arm])), "test_positives": info["n_pos"],
           "test_images": info["num_images"]}
    for m in METRICS:
      e = s[m]
      row.update({f"{m}_mean": e["mean"], f"{m}_std": e["std"], f"{m}_min": e["min"], f"{m}_max": e["max"],
                  f"{m}_ci_low": e["ci"][0] if e["ci"] else None,
                  f"{m}_ci_high": e["ci"][1] if e["ci"] else None})
    rows.append(row)
  return rows


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                       for k, v in row.items()})


def markdown(summary: dict, info: dict, runs_table: List[dict]) -> str:
  level = round(100 * info["confidence"])
  target = info["target"]
  seeds = sorted({len(v) for v in info["seeds"].values()})
  lines = [
      f"# Imbalance study: {target}", "",
      f"`{info['command']}`", "",
      f"- Data: {info.get('data', '?')}.",
      f"- **Chosen on validation: `{info.get('chosen_arm') or 'none (no arm has a validation AUPRC)'}`** (the "
      f"highest mean over seeds of the {target} validation AUPRC, column 'val AUPRC'). Test numbers below are "
      "reported, never used to choose an arm, a checkpoint or a threshold.",
      f"- Test split `{info['split']}`: {info['num_images']} images, {info['num_patients']} patients, "
      f"**{info['n_pos']} {target} positives** (prevalence {_f(info['prevalence'], '.4f')}: the AUPRC of "
      "a random scorer).",
      f"- Seeds per arm: {', '.join(map(str, seeds))} (config.seed = {', '.join(map(str, info['all_seeds']))}); "
      "the data and the splits are the same for every run"
      + (" (one seed: no seed spread; run --seeds=3 or more before drawing conclusions)." if seeds == [1] else "."),
      f"- Recall, precision and F1 at the threshold chosen on validation ({info['threshold_rule']}); "
      "AUROC and AUPRC are threshold-free; macro AUROC is the mean over the 14 classes.",
      f"- Cells: mean over seeds ±standard deviation over seeds [{level}% interval]. The interval is a "
      f"patient bootstrap of the test set ({info['bootstrap_samples']} samples, every seed scored on the "
      "same resamples, the metric averaged over seeds per resample): it shows how much the number would "
      "move on another test set of this size; the ± shows how much it moves between training seeds. For "
      "recall, precision and F1 the validation patients are resampled too and the threshold re-chosen on "
      "each resample, so their intervals include the threshold's uncertainty.",
      "- Accuracy is not shown: predicting 'no " + target + "' for everyone scores "
      f"{_f(1 - info['prevalence'], '.3f') if info['prevalence'] is not None else 'n/a'}.",
  ]
  if info.get("notes"):
    lines += [f"- {n}" for n in info["notes"]]
  lines += ["", "| arm | val AUPRC | " + " | ".join(f"{target} {LABELS[m]}" if m in TARGET_METRICS else LABELS[m]
                                                    for m in METRICS) + " |",
            "|:--|--:|" + "--:|" * len(METRICS)]
  for arm, s in summary.items():
    name = f"**{arm}** (chosen)" if arm == info.get("chosen_arm") else arm
    lines.append(f"| {name} | {format_cell(s['val_auprc'])} | " + " | ".join(format_cell(s[m]) for m in METRICS)
                 + " |")
  for row in info.get("controls") or []:
    lines.append(f"| control: {row['name']} | n/a | " + " | ".join(
        _f(row.get(m)) if row.get(m) is not None else "n/a" for m in METRICS) + " |")
  lines += ["", "## Runs", "", "| arm | seed | checkpoint step | threshold | " +
            " | ".join(LABELS[m] for m in METRICS) + " |", "|:--|--:|--:|--:|" + "--:|" * len(METRICS)]
  for r in runs_table:
    lines.append(f"| {r['arm']} | {r['seed']} | {r['checkpoint_step']} | {_f(r['threshold'], '.4f')} | "
                 + " | ".join(_f(r[m]) for m in METRICS) + " |")
  lines += ["", "Chart: study.png. Numbers: study.csv (per arm), study_runs.csv (per run), study.json.", ""]
  return "\n".join(lines)


def plot(path: str, summary: dict, info: dict, metrics: Sequence[str] = ("recall", "f1", "auprc")) -> None:
  """Bars of the seed means per arm with their intervals as error bars, seeds as dots; one panel per metric."""
  arms = list(summary)
  fig = Figure(figsize=(3.2 * len(metrics) + 1.0, 4.2), dpi=110)
  FigureCanvasAgg(fig)
  x = np.arange(len(arms))
  for i, m in enumerate(metrics):
    ax = fig.add_subplot(1, len(metrics), i + 1)
    means = np.asarray([np.nan if summary[a][m]["mean"] is None else summary[a][m]["mean"] for a in arms])
    low = np.asarray([means[k] - summary[a][m]["ci"][0] if summary[a][m]["ci"] else 0.0 for k, a in enumerate(arms)])
    high = np.asarray([summary[a][m]["ci"][1] - means[k] if summary[a][m]["ci"] else 0.0 for k, a in enumerate(arms)])
    ax.bar(x, np.nan_to_num(means), color="#8fb3d9", edgecolor="#2c5d8f", width=0.6, zorder=2)
    ax.errorbar(x, np.nan_to_num(means), yerr=np.stack([np.maximum(low, 0), np.maximum(high, 0)]), fmt="none",
                ecolor="black", capsize=4, lw=1.2, zorder=3)
    for k, a in enumerate(arms):
      seeds = [v for v in summary[a][m]["values"] if v is not None]
      ax.scatter(np.full(len(seeds), x[k]) + np.linspace(-0.12, 0.12, len(seeds)) * (len(seeds) > 1), seeds,
                 s=14, color="#c0392b", zorder=4, label="seeds" if k == 0 else None)
    if m == "auprc" and info.get("prevalence") is not None:
      ax.axhline(info["prevalence"], ls=":", color="black", lw=1, label=f"chance {info['prevalence']:.3f}")
    ax.set_xticks(x, arms, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{info['target']} {LABELS[m]}")
    ax.grid(axis="y", alpha=0.3)
    if i == 0 or m == "auprc":
      ax.legend(fontsize=7, loc="upper left", frameon=False)
  level = round(100 * info["confidence"])
  fig.suptitle(f"{info['split']}: {info['n_pos']} {info['target']} positives; bars: mean over seeds, "
               f"whiskers: {level}% patient-bootstrap interval", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, bbox_inches="tight")


# ----------------------------------------------------------------------------
# The study.
# ----------------------------------------------------------------------------


def run_study(make_config: Callable[[str], ml_collections.ConfigDict], workdir: str, *,
              arms: Optional[Sequence[str]] = None, num_seeds: int = DEFAULT_SEEDS,
              bootstrap_samples: int = 1000, alpha: float = 0.05, bootstrap_seed: int = 0,
              train_fn: Callable = experiment.run, command: str = "", out=sys.stdout,
              controls: bool = True) -> dict:
  """Trains every (arm, seed) not yet finished, then writes WORKDIR/study.{md,csv,json,png}.

  Args:
    make_config: arm -> the config of that arm (see `config_factory`).
    workdir: the study's folder; each run goes to WORKDIR/<arm>/seed<s>.
    arms: the arms (default: every arm in jaxcxr/arms.py ARMS).
    num_seeds: runs per arm.
    bootstrap_samples: patient-bootstrap samples of the intervals (0: no intervals).
    alpha: 1 - confidence level of the intervals.
    bootstrap_seed: seed of the resampling (the same for every run, so that runs share resamples).
    train_fn: train_fn(config, workdir) trains one run and writes its report.
    command: the command line, quoted in study.md.
    out: where progress lines go.

  Returns:
    {'summary': {arm: summarize_arm(...)}, 'info': {...}, 'runs': [per-run rows], 'trained': int}.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if bootstrap_samples < 0:
    raise StudyError(f"--bootstrap_samples must be >= 0, got {bootstrap_samples}.")
  if not 0.0 < alpha < 1.0:
    raise StudyError(f"--alpha must be in (0, 1), got {alpha}.")
  arms = select_arms(arms)
  runs = plan_runs(make_config, arms=arms, num_seeds=num_seeds, workdir=workdir)
  print(f"Study in {workdir}: {len(arms)} arm(s) ({', '.join(arms)}) x {num_seeds} seed(s) = {len(runs)} runs; "
        f"{sum(r.finished for r in runs)} finished earlier.", file=out, flush=True)
  trained = execute(runs, train_fn=train_fn, out=out)

  print(f"Scoring {len(runs)} runs on test" + (f" with {bootstrap_samples} patient-bootstrap samples"
                                             if bootstrap_samples else "") + "...", file=out, flush=True)
  splits_cache = _SplitCache()
  arm_reports, boots, notes, runs_table = {}, {}, [], []
  first = None
  for run in runs:
    report = _load_report(run)
    first = first or report
    if report["target"] != first["target"] or report["split"] != first["split"]:
      raise StudyError(f"{run.name} reports on {report['target']} / {report['split']}, another run on "
                       f"{first['target']} / {first['split']}: one study compares one target on one split.")
    boot = None
    if bootstrap_samples:
      data = load_test_scores(run, report, splits_cache=splits_cache)
      if data is None:
        notes.append(f"{run.name}: no saved test scores (SMOTE report without {reports.SCORES_FILE}); "
                     "its arm shows the report's own intervals or none.")
      else:
        thresholds = [report["classes"][c]["threshold"] for c in nih.CLASSES]
        validation = ({k: data[k] for k in ("val_labels", "val_scores", "val_patients")}
                      if "val_scores" in data else None)
        if validation is None:
          notes.append(f"{run.name}: no saved validation scores; its recall, precision and F1 intervals hold the "
                       "threshold fixed.")
        boot = run_bootstrap(labels=data["labels"], scores=data["scores"], patients=data["patients"],
                             thresholds=thresholds, target=report["target"], num_samples=bootstrap_samples,
                             seed=bootstrap_seed, validation=validation,
                             rule=report.get("threshold_rule", "max_f1"),
                             target_recall=report.get("target_recall", 0.9))
    arm_reports.setdefault(run.arm, []).append(report)
    boots.setdefault(run.arm, []).append(boot)
    t = report["classes"][report["target"]]
    runs_table.append({"arm": run.arm, "seed": run.seed, "checkpoint_step": report.get("checkpoint_step"),
                       "threshold": t.get("threshold"), **run_values(report), "workdir": run.workdir})
    if report.get("validation", {}).get("target_auprc") is None:
      notes.append(f"{run.name}: its report has no validation AUPRC of the target; it cannot be chosen.")

  summary = {arm: summarize_arm(arm_reports[arm], boot=boots[arm] if bootstrap_samples else None, alpha=alpha)
             for arm in arms}
  chosen = choose_arm(summary)
  control = control_rows(runs[0].config, first["target"], workdir, out=out) if controls else []
  target = first["classes"][first["target"]]
  num_images = first.get("num_images", target.get("n"))
  n_pos = target.get("n_pos")
  info = {
      "command": command, "target": first["target"], "split": first["split"], "n_pos": n_pos,
      "num_images": num_images,
      "num_patients": first.get("num_patients") or _num_patients(runs[0]),
      "prevalence": (n_pos / num_images) if n_pos is not None and num_images else None,
      "threshold_rule": first.get("threshold_rule", "?"), "bootstrap_samples": bootstrap_samples,
      "confidence": 1.0 - alpha, "seeds": {arm: [r.seed for r in runs if r.arm == arm] for arm in arms},
      "all_seeds": sorted({r.seed for r in runs}), "notes": notes, "chosen_arm": chosen,
      "data": data_description(first, runs[0].config), "controls": control,
  }
  if jax.process_index() == 0:
    _write_csv(os.path.join(workdir, "study.csv"), csv_rows(summary, info))
    _write_csv(os.path.join(workdir, "study_runs.csv"), runs_table)
    with open(os.path.join(workdir, "study.md"), "w") as f:
      f.write(markdown(summary, info, runs_table))
    with open(os.path.join(workdir, "study.json"), "w") as f:
      json.dump({"info": info, "summary": summary, "runs": runs_table}, f, indent=2)
      f.write("\n")
    plot(os.path.join(workdir, "study.png"), summary, info)
    print(f"\nStudy ({info['split']}, {n_pos} {info['target']} positives in {num_images} test images) -> "
          f"{workdir}/study.md, study.csv, study_runs.csv, study.png", file=out)
    print(format_terminal(summary, info), file=out, flush=True)
  return {"summary": summary, "info": info, "runs": runs_table, "trained": trained}


def _num_patients(run):
  path = os.path.join(run.workdir, "study", SCORES_FILE)
  if os.path.exists(path):
    with np.load(path) as z:
      return int(np.unique(z["patients"]).size)
  return "?"


def format_terminal(summary: dict, info: dict) -> str:
  width = max(len("arm"), *(len(a) for a in summary))
  head = f"{'arm':<{width}}  " + "  ".join(f"{LABELS[m]:>24}" for m in METRICS)
  lines = [head, "-" * len(head)]
  for arm, s in summary.items():
    lines.append(f"{arm:<{width}}  " + "  ".join(f"{format_cell(s[m]):>24}" for m in METRICS))
  return "\n".join(lines)

"""The imbalance study: config-string grammar, aggregation over seeds, skipping finished runs, outputs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcxr import arms
from configs import demo
from configs import hernia
from jaxcxr import bootstrap
from jaxcxr import metrics
from jaxcxr import experiment
from jaxcxr import head_stages
from jaxcxr import reports
from jaxcxr import study_runner as study
from jaxcxr.data import datasets
from jaxcxr.data import nih
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# Config strings.
# ----------------------------------------------------------------------------


def test_config_string_grammar():
  parse = lambda arg: arms.parse_config_string(arg, default_arm="weighted", modifiers=("quick",))
  assert parse("quick,focal") == ("focal", frozenset({"quick"}))
  assert parse(" focal , quick ") == ("focal", frozenset({"quick"}))
  assert parse("focal") == ("focal", frozenset())
  assert parse("quick") == ("weighted", frozenset({"quick"}))
  assert parse("") == parse(None) == ("weighted", frozenset())
  assert arms.parse_config_string("quick", modifiers=("quick",)) == (None, frozenset({"quick"}))
  with pytest.raises(ValueError) as e:
    parse("quick,fcoal")
  for valid in (*arms.ARMS, "quick"):
    assert valid in str(e.value)
  assert "'fcoal'" in str(e.value)
  with pytest.raises(ValueError, match="two arms"):
    parse("focal,baseline")
  with pytest.raises(ValueError, match="quick"):
    arms.parse_config_string("quick", default_arm="weighted")  # A config without modifiers.


def test_configs_accept_the_grammar():
  full, quick = demo.get_config("focal"), demo.get_config("quick,focal")
  assert full.arm == quick.arm == "focal" and quick.loss.name == full.loss.name == "focal"
  assert quick.train.num_steps < full.train.num_steps
  assert quick.data.phantom.num_images == full.data.phantom.num_images  # Reuses the cached data set.
  assert demo.get_config().arm == demo.get_config("").arm == demo.get_config("quick").arm == demo.DEFAULT_ARM
  assert hernia.get_config("baseline").arm == "baseline"
  with pytest.raises(ValueError, match="quick"):
    hernia.get_config("quick")  # Only the demo has a quick variant.


def test_config_factory_adds_the_arm_and_keeps_overrides():
  make = study.config_factory("configs/demo.py:quick", {"train.num_steps": 7, "data.image_size": 32})
  for arm in arms.ARMS:
    config = make(arm)
    assert config.arm == arm and config.train.num_steps == 7 and config.data.image_size == 32
    assert config.train.eval_every == demo.get_config("quick").train.eval_every
  with pytest.raises(study.StudyError, match="--arms=focal"):
    study.config_factory("configs/demo.py:quick,focal")
  with pytest.raises(study.StudyError, match="not found"):
    study.config_factory("configs/nope.py:quick")
  with pytest.raises(study.StudyError, match="needs a config with arms"):  # CheXNet's recipe has none.
    study.config_factory("configs/chexnet.py")
  assert study.default_seeds("configs/demo.py:quick") == study.QUICK_SEEDS
  assert study.default_seeds("configs/hernia.py") == study.DEFAULT_SEEDS
  with pytest.raises(study.StudyError, match="choose among"):
    study.select_arms(["baseline", "nope"])
  assert study.select_arms(None) == list(arms.ARMS)


# ----------------------------------------------------------------------------
# Aggregation on hand-made reports.
# ----------------------------------------------------------------------------


def _report(recall, auprc, macro_auroc, *, target="Hernia", ci=None):
  classes = {c: {"recall": 0.1, "precision": 0.1, "f1": 0.1, "auroc": 0.5, "auprc": 0.1, "threshold": 0.5,
                 "n_pos": 3} for c in nih.CLASSES}
  classes[target] = {"recall": recall, "precision": 0.25, "f1": 0.4, "auroc": 0.8, "auprc": auprc,
                     "threshold": 0.3, "n_pos": 5, **({"recall_ci": ci} if ci else {})}
  return {"target": target, "split": "official/test", "classes": classes, "macro": {"auroc": macro_auroc}}


def test_summary_over_seeds():
  reports = [_report(0.5, 0.2, 0.80), _report(0.7, 0.4, 0.82), _report(0.9, None, 0.84)]
  s = study.summarize_arm(reports)
  r = s["recall"]
  assert r["mean"] == pytest.approx(0.7) and r["std"] == pytest.approx(0.2)
  assert (r["min"], r["max"], r["n"]) == (0.5, 0.9, 3) and r["values"] == [0.5, 0.7, 0.9]
  assert s["auprc"]["mean"] == pytest.approx(0.3) and s["auprc"]["n"] == 2  # None (undefined) is left out.
  assert s["auprc"]["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
  assert s["macro_auroc"]["mean"] == pytest.approx(0.82)
  assert s["precision"]["std"] == pytest.approx(0.0)
  assert all(s[m]["ci"] is None for m in study.METRICS)  # No scores, several seeds: no interval.
  one = study.summarize_arm([_report(0.6, 0.3, 0.8, ci=[0.4, 0.8])])
  assert one["recall"]["std"] is None and one["recall"]["ci"] == [0.4, 0.8]
  assert one["recall"]["ci_source"] == "report"
  assert study.format_cell(s["recall"]) == "0.700 ±0.200"


def test_interval_is_of_the_seed_mean_on_shared_resamples():
  rng = np.random.default_rng(0)
  boots = [rng.uniform(0.3, 0.9, size=(len(study.METRICS), 400)) for _ in range(2)]
  boots[1][0, :10] = np.nan  # Undefined on some resamples: those are skipped.
  s = study.summarize_arm([_report(0.5, 0.2, 0.8), _report(0.7, 0.4, 0.8)], boot=boots, alpha=0.1)
  mean = (boots[0][0] + boots[1][0]) / 2
  low, high = np.percentile(mean[10:], [5, 95])
  assert s["recall"]["ci"] == pytest.approx([low, high]) and s["recall"]["ci_source"] == "patient bootstrap"
  # Not the pooled values' interval, nor one seed's.
  assert s["recall"]["ci"] != pytest.approx(list(np.percentile(boots[0][0], [5, 95])))


def test_run_bootstrap_matches_the_bootstrap_module():
  rng = np.random.default_rng(1)
  n = 300
  labels = (rng.uniform(size=(n, len(nih.CLASSES))) < 0.1).astype(np.float32)
  scores = np.clip(labels * 0.3 + rng.uniform(size=labels.shape) * 0.7, 0, 1)
  patients = rng.integers(0, 120, size=n)
  thresholds = np.full(len(nih.CLASSES), 0.5)
  values = study.run_bootstrap(labels=labels, scores=scores, patients=patients, thresholds=thresholds,
                               target="Hernia", num_samples=50, seed=3)
  assert values.shape == (len(study.METRICS), 50)
  h = nih.CLASSES.index("Hernia")
  ref = bootstrap.bootstrap_values(
      [(bootstrap.threshold_metric("recall", 0.5), labels[:, h], scores[:, h])]
      + [(bootstrap.AUROC, labels[:, c], scores[:, c]) for c in range(len(nih.CLASSES))],
      groups=patients, num_samples=50, seed=3)
  np.testing.assert_allclose(values[0], ref[0])
  np.testing.assert_allclose(values[-1], np.nanmean(ref[1:], 0))


# ----------------------------------------------------------------------------
# The study on fake and on tiny real runs.
# ----------------------------------------------------------------------------


class FakeTrainer:
  """Writes a plausible final report (and its test scores) per run, counting calls, without training."""

  def __init__(self):
    self.calls = []
    self._splits = None

  def __call__(self, config, workdir):
    self.calls.append((config.arm, config.seed))
    if self._splits is None:
      self._splits = datasets.load_splits(config)
    test = self._splits["test"]
    labels = test.meta.labels
    rng = np.random.default_rng([arms.ARMS.index(config.arm), config.seed])
    scores = np.clip(labels * rng.uniform(0.1, 0.6) + rng.uniform(size=labels.shape) * 0.6, 0, 1)
    result = metrics.evaluate_scores(labels=labels, scores=scores, classes=nih.CLASSES,
                                     thresholds=np.full(len(nih.CLASSES), 0.5))
    report = {"split": "official/test", "checkpoint_step": 8, "target": config.data.target, "arm": config.arm,
              "threshold_rule": "max_f1", "num_images": len(test),
              "validation": {"target_auprc": float(rng.uniform())}, **result}
    out = experiment.report_dir(config, workdir)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
      json.dump(report, f)
    np.savez(os.path.join(out, reports.SCORES_FILE), scores=scores)
    return report


def _effusion_config(data_dir, arm):
  config = tiny_config(data_dir, arm)
  config.data.target = "Effusion"  # The tiny test split has no Hernia positives.
  return config


def test_study_covers_every_arm_and_skips_finished_runs(tiny_data_dir, tmp_path):
  fake = FakeTrainer()
  make = lambda arm: _effusion_config(tiny_data_dir, arm)
  work = str(tmp_path / "study")
  log = open(os.devnull, "w")
  result = study.run_study(make, work, num_seeds=2, bootstrap_samples=100, train_fn=fake, out=log)
  assert sorted(fake.calls) == sorted((a, s) for a in arms.ARMS for s in (0, 1))
  assert result["trained"] == 2 * len(arms.ARMS)
  with open(os.path.join(work, "study.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["arm"] for r in rows] == list(arms.ARMS)
  for r in rows:
    assert r["seeds"] == "0 1" and r["runs"] == "2"
    for m in study.METRICS:
      assert r[f"{m}_mean"] != "" and r[f"{m}_std"] != "", (r["arm"], m)
    assert 0.0 <= float(r["auroc_ci_low"]) < float(r["auroc_ci_high"]) <= 1.0
  with open(os.path.join(work, "study_runs.csv")) as f:
    assert len(list(csv.DictReader(f))) == 2 * len(arms.ARMS)
  md = open(os.path.join(work, "study.md")).read()
  # Validation chooses: the arm with the highest mean validation AUPRC over its seeds, whatever test says.
  val = {}
  for arm in arms.ARMS:
    paths = [os.path.join(experiment.report_dir(make(arm), os.path.join(work, arm, f"seed{s}")), "report.json")
             for s in (0, 1)]
    val[arm] = np.mean([json.load(open(p))["validation"]["target_auprc"] for p in paths])
  chosen = result["info"]["chosen_arm"]
  assert chosen == max(val, key=val.get)
  assert f"| **{chosen}** (chosen) |" in md and f"Chosen on validation: `{chosen}`" in md
  for arm in arms.ARMS:
    assert f"| {arm} |" in md or arm == chosen
  # The no-learning controls of the phantom sit beside the arms.
  assert "| control: window |" in md and "| control: logreg |" in md
  assert os.path.exists(os.path.join(work, "controls.json"))
  assert "official/test" in md and "Effusion positives" in md
  assert os.path.getsize(os.path.join(work, "study.png")) > 10_000
  # The per-arm mean is the mean of its runs' reports.
  for arm in arms.ARMS:
    recalls = [r["recall"] for r in result["runs"] if r["arm"] == arm]
    assert result["summary"][arm]["recall"]["mean"] == pytest.approx(np.mean(recalls))

  # A rerun trains nothing; a missing report is retrained alone.
  fake.calls.clear()
  again = study.run_study(make, work, num_seeds=2, bootstrap_samples=100, train_fn=fake, out=log)
  assert fake.calls == [] and again["trained"] == 0
  assert again["summary"]["focal"]["recall"] == result["summary"]["focal"]["recall"]
  os.remove(os.path.join(work, "focal", "seed1", "report", "report.json"))
  study.run_study(make, work, arms=["focal", "baseline"], num_seeds=2, bootstrap_samples=0, train_fn=fake, out=log)
  assert fake.calls == [("focal", 1)]


def test_study_of_real_tiny_runs(tiny_data_dir, tmp_path):
  make = lambda arm: tiny_config(tiny_data_dir, arm)
  work = str(tmp_path / "study")
  result = study.run_study(make, work, arms=["focal"], num_seeds=1, bootstrap_samples=200,
                           out=open(os.devnull, "w"))
  # Scores re-predicted from the best checkpoint reproduce the trainer's report for every class.
  with np.load(os.path.join(work, "focal", "seed0", "study", study.SCORES_FILE)) as z:
    scores, labels = z["scores"], z["labels"]
  with open(os.path.join(work, "focal", "seed0", "report", "report.json")) as f:
    report = json.load(f)
  for c, name in enumerate(nih.CLASSES):
    if report["classes"][name]["auroc"] is not None:
      assert bootstrap.auroc(labels[:, c], scores[:, c]) == pytest.approx(report["classes"][name]["auroc"],
                                                                          abs=1e-4), name
  # A run without the report's scores file (older runs) gets its scores re-predicted from the checkpoint.
  os.remove(os.path.join(work, "focal", "seed0", "study", study.SCORES_FILE))
  os.remove(os.path.join(work, "focal", "seed0", "report", reports.SCORES_FILE))
  study.run_study(make, work, arms=["focal"], num_seeds=1, bootstrap_samples=10, out=open(os.devnull, "w"))
  with np.load(os.path.join(work, "focal", "seed0", "study", study.SCORES_FILE)) as z:
    np.testing.assert_allclose(z["scores"], scores, rtol=1e-5, atol=1e-6)
  summary = result["summary"]["focal"]
  assert summary["macro_auroc"]["mean"] == pytest.approx(report["macro"]["auroc"])
  low, high = summary["macro_auroc"]["ci"]
  assert low <= high and summary["macro_auroc"]["ci_source"] == "patient bootstrap"
  # A changed config in the same workdir is refused rather than mixed in.
  changed = lambda arm: tiny_config(tiny_data_dir, arm, num_steps=6)
  with pytest.raises(study.StudyError, match="train.num_steps"):
    study.run_study(changed, work, arms=["focal"], num_seeds=1, out=open(os.devnull, "w"))


def test_cli_help_and_arm_in_config_string(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "jaxcxr.study", "--help"], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=120)
  assert "--seeds" in out.stdout and "study.md" in out.stdout  # absl exits 1 after --help.
  bad = subprocess.run([sys.executable, "-m", "jaxcxr.study", "--config=configs/demo.py:quick,focal",
                        f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert bad.returncode == 2 and "--arms=focal" in bad.stderr and "Traceback" not in bad.stderr


def test_smote_arms_report_from_their_own_folder(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, "baseline")
  assert experiment.report_dir(config, "w") == os.path.join("w", "report")  # No smote field yet.
  config.unlock()
  config.smote = {"method": "none"}
  assert not head_stages.is_smote(config) and experiment.report_dir(config, "w") == os.path.join("w", "report")
  config.smote.method = "smote"
  assert head_stages.is_smote(config) and experiment.report_dir(config, "w") == os.path.join("w", "smote")
  # Without saved test scores a SMOTE run cannot be re-predicted from the trunk's checkpoint: no scores.
  run = study.Run("smote", 0, str(tmp_path), config)
  assert study.load_test_scores(run, {}, splits_cache=None) is None

"""Checkpoint evaluation on a tiny trained run: agreement with the trainer's report, intervals, errors, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcxr import errors
from jaxcxr import evaluation as evaluate
from jaxcxr import experiment
from jaxcxr import metrics
from jaxcxr import model_context
from jaxcxr import reports
from jaxcxr import runfolder
from jaxcxr.data import datasets
from jaxcxr.data import nih
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):
  """One tiny training run for the whole module: (config, workdir, the trainer's test report)."""
  config = tiny_config(tiny_data_dir)
  workdir = str(tmp_path_factory.mktemp("evaluate_run"))
  experiment.run(config, workdir)
  with open(os.path.join(workdir, "report", "report.json")) as f:
    return config, workdir, json.load(f)


@pytest.fixture(scope="module")
def trainer(run):
  """The run's model context (named for the tests' history: it replaced a full Trainer here)."""
  config, workdir, _ = run
  return model_context.ModelContext.from_workdir(workdir, config)


@pytest.fixture(scope="module")
def evaluated(run):
  """evaluate_checkpoint of the best checkpoint on test, as the trainer's report was made."""
  config, workdir, _ = run
  return evaluate.evaluate_checkpoint(config, workdir, checkpoint="best", split="test", threshold_rule="max_f1",
                                      bootstrap_samples=200, progress=False, verbose=False)


def test_reproduces_the_trainers_report(run, evaluated):
  _, workdir, trained = run
  assert evaluated["checkpoint_step"] == trained["checkpoint_step"]
  assert evaluated["split"] == trained["split"] == "official/test"
  assert evaluated["num_images"] == trained["num_images"]
  for name in nih.CLASSES:
    ours, theirs = evaluated["classes"][name], trained["classes"][name]
    for key in ("auroc", "auprc"):
      if theirs[key] is None:
        assert ours[key] is None, (name, key)
      else:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), (name, key)
    assert ours["threshold"] == pytest.approx(theirs["threshold"], abs=1e-6), name
    assert ours["recall"] == theirs["recall"] or ours["recall"] == pytest.approx(theirs["recall"]), name
    assert ours["n_pos"] == theirs["n_pos"]
  out = os.path.join(workdir, "eval", "best-test")
  for f in ("report.json", "report.md", "roc.png", "pr.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  assert not os.path.exists(os.path.join(out, "reliability.png"))  # Only when calibrated.
  with open(os.path.join(out, "report.json")) as f:
    saved = json.load(f)
  for key in ("split", "checkpoint_step", "classes", "macro", "threshold_rule", "calibration",
              "bootstrap_samples"):
    assert key in saved, key
  assert saved["calibration"] == "none" and saved["bootstrap_samples"] == 200
  assert saved["classes"]["Hernia"]["auroc"] == pytest.approx(evaluated["classes"]["Hernia"]["auroc"])
  assert "patient-bootstrap" in open(os.path.join(out, "report.md")).read()


def test_intervals_bracket_the_point_estimates(evaluated):
  some_defined = 0
  for name in nih.CLASSES:
    m = evaluated["classes"][name]
    assert m["brier"] is not None and 0.0 <= m["brier"] <= 1.0
    for key in evaluate.CI_METRICS:
      ci = m[f"{key}_ci"]
      assert ci is None or (isinstance(ci, list) and len(ci) == 2), (name, key, ci)
      if ci is not None:
        assert m[key] is not None, (name, key)
        assert ci[0] - 1e-12 <= m[key] <= ci[1] + 1e-12, (name, key, m[key], ci)
        some_defined += 1
      if m["n_pos"] == 0:
        assert ci is None and m[key] is None or key == "f1", (name, key)
  assert some_defined >= 20


def test_joint_intervals_carry_the_thresholds_uncertainty(evaluated):
  """The joint (validation + test) bootstrap re-chooses the threshold per resample, so its recall interval
  is at least as wide as the fixed-threshold one for the target, which has few validation positives."""
  m = evaluated["classes"]["Hernia"]
  assert m["n_pos"] > 0 and evaluated["validation"]["target_images"] > 0
  fixed, joint = m["recall_ci"], m["recall_ci_joint"]
  assert fixed is not None and joint is not None
  assert joint[1] - joint[0] >= fixed[1] - fixed[0] - 1e-12, (fixed, joint)
  assert set(("recall_ci_joint", "precision_ci_joint", "f1_ci_joint")) <= set(m)


def test_absent_step_names_the_available_steps(run, trainer):
  config, workdir, _ = run
  steps = sorted(trainer.checkpoints.all_steps())
  with pytest.raises(runfolder.RunFolderError, match=r"step 3\b.*available steps: " + ", ".join(map(str, steps))):
    evaluate.evaluate_checkpoint(config, workdir, checkpoint="3", ctx=trainer, verbose=False)
  with pytest.raises(runfolder.RunFolderError, match="'best', 'latest' or a step"):
    evaluate.evaluate_checkpoint(config, workdir, checkpoint="newest", ctx=trainer, verbose=False)
  assert runfolder.resolve_checkpoint(trainer.checkpoints, "latest") == max(steps)
  assert runfolder.resolve_checkpoint(trainer.checkpoints, steps[0]) == steps[0]


def test_no_checkpoints_is_a_clear_error(run, tmp_path):
  config, _, _ = run
  empty = tmp_path / "never_trained"
  with pytest.raises(runfolder.RunFolderError, match="No checkpoints in .*never_trained"):
    evaluate.evaluate_checkpoint(config, str(empty), verbose=False)
  assert not empty.exists()  # Nothing is created on the way.


def test_calibrated_validation_report(run, trainer, tmp_path, capsys):
  config, workdir, _ = run
  plain = evaluate.evaluate_checkpoint(config, workdir, checkpoint="latest", split="val", ctx=trainer,
                                       bootstrap_samples=0, out_dir=str(tmp_path / "plain"), verbose=False)
  report = evaluate.evaluate_checkpoint(config, workdir, checkpoint="latest", split="val", ctx=trainer,
                                        calibration="temperature", threshold_rule="target_recall",
                                        target_recall=0.8, bootstrap_samples=50, out_dir=str(tmp_path / "cal"),
                                        progress=False)
  assert report["split"] == "official/val" and report["calibration"] == "temperature"
  assert report["target_recall"] == 0.8
  assert (tmp_path / "cal" / "reliability.png").stat().st_size > 0
  assert plain["classes"]["Hernia"]["auroc_ci"] is None  # No bootstrap asked for.
  saved = np.load(tmp_path / "cal" / reports.SCORES_FILE)
  for name in nih.CLASSES:
    m = report["classes"][name]
    assert m["brier_uncalibrated"] == pytest.approx(plain["classes"][name]["brier"])
    assert report["calibration_params"][name]["temperature"] > 0
    if m["auroc"] is not None:  # Calibration is monotone: the ranking is kept.
      assert m["auroc"] == pytest.approx(plain["classes"][name]["auroc"], abs=1e-6)
    if m["n_pos"]:  # The threshold is the target_recall rule's choice on this split's calibrated scores.
      c = nih.CLASSES.index(name)
      chosen = metrics.choose_threshold(labels=saved["labels"][:, c], scores=saved["scores"][:, c],
                                        rule="target_recall", target_recall=0.8)
      assert m["threshold"] == pytest.approx(chosen, rel=1e-6), name
  assert report["macro"]["brier"] <= report["macro"]["brier_uncalibrated"] + 1e-3
  printed = capsys.readouterr().out
  assert "Hernia:" in printed and "patient-bootstrap" in printed and "AUROC" in printed


def test_workdir_config_round_trips(run):
  config, workdir, _ = run
  loaded = runfolder.read_config(workdir)
  for key in ("model.name", "data.image_size", "data.dir", "data.target", "train.eval_batch_size", "seed"):
    assert runfolder.get_field(loaded, key) == runfolder.get_field(config, key), key
  wrong = tiny_config(config.data.dir)
  wrong.model.name = "resnet18"
  with pytest.raises(runfolder.RunFolderError, match="model.name was 'resnet_tiny', now 'resnet18'"):
    evaluate.evaluate_checkpoint(wrong, workdir, verbose=False)


def _cli(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path))
  env.pop("JAX_NUM_CPU_DEVICES", None)  # One device: the Trainer shards over whatever there is.
  return subprocess.run([sys.executable, "-m", "jaxcxr.evaluate", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_line(run, tmp_path):
  config, workdir, _ = run
  # The fields of the tiny config that the data, the model and the batches depend on.
  fields = ("data.dir", "data.image_size", "data.phantom.num_images", "data.phantom.hernia_prevalence",
            "model.name", "train.batch_size", "train.eval_batch_size")
  overrides = [f"--config.{k}={runfolder.get_field(config, k)}" for k in fields]
  proc = _cli(["--config=configs/demo.py", *overrides, f"--workdir={workdir}", "--checkpoint=latest",
               "--split=test", "--calibration=platt", "--bootstrap_samples=50"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = os.path.join(workdir, "eval", "latest-test")
  for f in ("report.json", "report.md", "roc.png", "pr.png", "reliability.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  with open(os.path.join(out, "report.json")) as f:
    saved = json.load(f)
  assert saved["calibration"] == "platt" and saved["bootstrap_samples"] == 50
  assert "Hernia:" in proc.stdout and "macro" in proc.stdout


def test_command_line_error_is_one_clear_message(tmp_path):
  proc = _cli([f"--workdir={tmp_path / 'nothing_here'}"], tmp_path)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert "nothing_here/config.json not found" in proc.stderr and "Pass --config" in proc.stderr
  assert len([l for l in proc.stderr.splitlines() if l.strip()]) == 1, proc.stderr


def test_library_modules_define_no_flags():
  """Flags live in the entry points only: the libraries a test or a notebook imports define none."""
  code = ("import jaxcxr.evaluation, jaxcxr.head_stages, jaxcxr.study_runner, jaxcxr.embeddings, "
          "jaxcxr.experiment; from absl import flags; "
          "print(sorted(n for n in flags.FLAGS if n in ('workdir', 'config', 'checkpoint', 'arms')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"


def test_evaluation_builds_no_optimiser_and_reads_no_training_images(run, tmp_path, monkeypatch):
  """Evaluating a workdir restores and predicts: no optax optimiser is made and not one training image is
  read (the training split's pixels are replaced by an array that fails on any access)."""
  config, workdir, _ = run
  import optax  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError("evaluation built an optimiser")

  for name in ("adam", "adamw", "sgd", "chain"):
    monkeypatch.setattr(optax, name, refuse)

  class Untouchable:
    def __init__(self, real):
      self.shape, self.dtype = real.shape, real.dtype

    def __getitem__(self, index):
      raise AssertionError("evaluation read a training image")

    def __array__(self, *args, **kwargs):
      raise AssertionError("evaluation read a training image")

  real_load = datasets.load_splits

  def guarded(cfg):
    splits = dict(real_load(cfg))
    train = splits["train"]
    splits["train"] = type(train)(train.name, train.meta, Untouchable(train.images), train.rows)
    return splits

  monkeypatch.setattr(datasets, "load_splits", guarded)
  report = evaluate.evaluate_checkpoint(config, workdir, bootstrap_samples=0, out_dir=str(tmp_path / "e"),
                                        verbose=False)
  assert report["num_images"] == len(real_load(config)["test"]) > 0
  assert set(report["classes"]) == set(nih.CLASSES)
  assert isinstance(runfolder.RunFolderError("x"), errors.UserError)

"""cRT (decoupled classifier re-training): class-balanced head training, its report and its write-back."""

import json
import os

import ml_collections
import numpy as np
import pytest

from jaxcxr import evaluation
from jaxcxr import experiment
from jaxcxr import heads
from tests.helpers import assert_written_back_head_matches
from tests.helpers import tiny_config


def _head_config(steps=300):
  return ml_collections.ConfigDict({"head": "linear", "steps": steps, "learning_rate": 5e-2, "batch_size": 64,
                                    "weight_decay": 0.0})


def test_sample_weights_decide_which_rows_the_head_sees():
  """With zero weight on every positive of class 0, the head never sees one: its class-0 bias falls far
  below the one trained on uniformly drawn rows (which see 30% positives)."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(400, 8)).astype(np.float32)
  labels = np.zeros((400, 2), np.float32)
  labels[:120, 0] = 1
  labels[::3, 1] = 1
  loss = ml_collections.ConfigDict({"name": "bce"})
  uniform, *_ = heads.train_head(features, labels, head_config=_head_config(), loss_config=loss, seed=0,
                                 progress=False)
  weights = np.where(labels[:, 0] > 0, 0.0, 1.0)
  skewed, *_ = heads.train_head(features, labels, head_config=_head_config(), loss_config=loss, seed=0,
                                sample_weights=weights, progress=False)
  assert float(skewed["bias"][0]) < float(uniform["bias"][0]) - 1.0
  with pytest.raises(heads.HeadError, match="sample_weights"):
    heads.train_head(features, labels, head_config=_head_config(), loss_config=loss, seed=0,
                     sample_weights=np.zeros(400), progress=False)


def test_logit_adjusted_head_counts_the_prior_once():
  """Features without information, class 0 at 10%: trained with logit adjustment (tau 1), the raw logit
  should carry no prior (bias near 0, the balanced odds), while a BCE head's bias sits at the log prior
  odds. A head started at the prior under logit adjustment counts it twice: after these 40 steps its bias
  was 1.27, far from 0, before the fix."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2000, 8)).astype(np.float32)
  labels = np.zeros((2000, 1), np.float32)
  labels[rng.permutation(2000)[:200], 0] = 1
  biases = {}
  for name in ("bce", "logit_adjusted"):
    loss = ml_collections.ConfigDict({"name": name, "tau": 1.0})
    params, *_ = heads.train_head(features, labels, head_config=_head_config(steps=40), loss_config=loss, seed=0,
                                  progress=False)
    biases[name] = float(params["bias"][0])
  assert abs(biases["bce"] - np.log(0.1 / 0.9)) < 0.3, biases
  assert abs(biases["logit_adjusted"]) < 0.5, biases


@pytest.fixture(scope="module")
def crt_run(tiny_data_dir, tmp_path_factory):
  config = tiny_config(tiny_data_dir, arm="crt")
  config.crt.steps = 150
  config.crt.batch_size = 64
  config.crt.learning_rate = 1e-2
  workdir = str(tmp_path_factory.mktemp("crt_run"))
  return config, workdir, experiment.run(config, workdir)


def test_crt_arm_reports_and_writes_back(crt_run):
  config, workdir, report = crt_run
  assert config.crt.enabled and config.loss.name == "bce"
  assert experiment.report_dir(config, workdir) == os.path.join(workdir, "crt")
  with open(os.path.join(workdir, "crt", "report.json")) as f:
    saved = json.load(f)
  assert saved["stage"] == "crt" and saved["head_sampling"] == "class_balanced"
  assert saved["split"] == "official/test" and "backbone" in saved
  assert "cRT head against the backbone" in open(os.path.join(workdir, "crt", "report.md")).read()
  # The written-back head, scored on images, gives the embedding-level report's numbers.
  combined = evaluation.evaluate_checkpoint(config, os.path.join(workdir, "crt"), checkpoint="best",
                                            split="test", bootstrap_samples=0, progress=False, verbose=False)
  assert_written_back_head_matches(combined, report)

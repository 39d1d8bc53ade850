"""inspect_data: the --json command on tiny phantom data."""

import json
import math
import os
import subprocess
import sys

import pytest

from jaxcxr.data import datasets
from jaxcxr.data import nih
from tests.helpers import tiny_config
from tests.helpers import tiny_overrides

HERNIA = nih.CLASSES.index("Hernia")


def test_json_smoke(tiny_data_dir, tmp_path):
  overrides = tiny_overrides(tiny_data_dir)
  cmd = [sys.executable, "-m", "jaxcxr.inspect_data", "--config=configs/demo.py:oversample", "--num_batches=20",
         "--json", f"--out={tmp_path}", "--config.data.sampling.cap=8"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout)
  assert set(nih.CLASSES) <= set(summary["sampled_share"]) and set(nih.CLASSES) <= set(summary["prevalence"])
  assert summary["num_images"] == 20 * 16
  assert abs(summary["sampled_share"]["Hernia"] - 0.25) < 0.05  # The oversample arm's target_ratio.
  # The natural share it reports is the training split's, well below what the sampling gives.
  train = datasets.load_splits(tiny_config(tiny_data_dir, arm="oversample"))["train"]
  assert summary["prevalence"]["Hernia"] == pytest.approx(train.meta.labels[:, HERNIA].mean())
  assert summary["prevalence"]["Hernia"] < 0.25 - 0.05
  assert 1 < summary["max_repeats"] <= 8 * math.ceil(summary["epoch_fraction"])  # Cap 8 per epoch.
  assert summary["top_repeats"][0]["count"] == summary["max_repeats"]
  assert os.path.getsize(summary["grid_png"]) > 1000 and summary["grid_png"].startswith(str(tmp_path))

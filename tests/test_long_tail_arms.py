"""A long-tail loss arm trains end to end on tiny data (:ldam_drw, the one that needs the training length
and the step; :asl and :logit_adjusted differ only in their elementwise loss, tested in test_losses.py),
and the train step hands its own step to the loss (deferred re-weighting switches on inside the step)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from jaxcxr import experiment
from jaxcxr import losses
from jaxcxr import model_context
from jaxcxr import train
from tests.helpers import tiny_config


def test_ldam_drw_arm_trains_end_to_end(tiny_data_dir, tmp_path):
  arm = "ldam_drw"
  config = tiny_config(tiny_data_dir, arm=arm, num_steps=4, eval_every=4)
  report = experiment.run(config, str(tmp_path))
  assert report["checkpoint_step"] == 4 and report["arm"] == arm
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train_losses = [m["train_loss"] for m in logged if "train_loss" in m]
  assert len(train_losses) == 2 and np.all(np.isfinite(train_losses)) and min(train_losses) > 0


def test_train_step_passes_its_step_to_the_loss():
  config = demo.get_config("ldam_drw")
  config.unlock()
  config.model.name = "resnet_tiny"
  num_pos = np.array([1, 3, 40, 200] * 3 + [5, 9])
  model = model_context.create_model(config, prevalence=num_pos / 1000)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8),
           "labels": (rng.random((8, 14)) < 0.3).astype(np.float32)}
  state = train.create_train_state(config, model, jax.random.key(0, impl="rbg"), 32)

  def losses_at(steps, name):
    """train_step's loss from the same parameters and batch, with the state's step set to each of `steps`."""
    config.loss.name = name
    loss_fn = losses.get_loss_fn(config.loss, num_pos=num_pos, num_total=1000, num_steps=100)
    step_loss = jax.jit(lambda s: train.train_step(s, batch, loss_fn=loss_fn)[1]["loss"])
    return [float(step_loss(state.replace(step=jnp.int32(step)))) for step in steps]

  # drw_start 0.8 of 100 steps: the class-balanced weights change the loss from step 80 on, not before.
  before, last_before, after = losses_at([0, 79, 80], "ldam")
  assert before == pytest.approx(last_before, rel=1e-6)
  assert after != pytest.approx(last_before, rel=1e-3)
  bce = losses_at([0, 80], "bce")
  assert bce[0] == pytest.approx(bce[1], rel=1e-6)

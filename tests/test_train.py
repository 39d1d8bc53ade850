"""End to end on tiny phantom data: a run, its report, sharded == single device, resume, non-finite loss."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import experiment
from jaxcxr import losses
from jaxcxr import model_context
from jaxcxr import train
from jaxcxr.data import nih
from tests.helpers import tiny_config


def _params(workdir, step):
  return jax.device_get(model_context.ModelContext.from_workdir(workdir).restore_step(step)["params"])


def test_end_to_end_report(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir)
  report = experiment.run(config, str(tmp_path))
  with open(tmp_path / "report" / "report.json") as f:
    saved = json.load(f)
  assert saved["split"] == "official/test"
  assert set(saved["classes"]) == set(nih.CLASSES)
  for key in ("n_pos", "auroc", "auprc", "recall", "specificity", "precision", "f1", "threshold",
              "recall_at_0.5", "precision_at_0.5", "f1_at_0.5"):
    assert key in saved["classes"]["Hernia"]
  assert saved["classes"]["Hernia"]["auroc"] == pytest.approx(report["classes"]["Hernia"]["auroc"])
  for name in ("report.md", "roc.png", "pr.png"):
    assert (tmp_path / "report" / name).stat().st_size > 0
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines if "train_loss" in l] == [2, 4, 6, 8]
  assert all(np.isfinite(l["train_loss"]) for l in lines if "train_loss" in l)
  # The report's checkpoint is the evaluation with the best validation AUPRC of the target (steps 4 and 8).
  val = {l["step"]: l["val_target_auprc"] for l in lines if "val_target_auprc" in l}
  assert sorted(val) == [4, 8] and val[saved["checkpoint_step"]] == max(val.values()), (val, saved["checkpoint_step"])
  assert os.listdir(tmp_path / "tensorboard")


def test_sharded_step_equals_single_device():
  assert jax.device_count() == 4, "conftest sets JAX_NUM_CPU_DEVICES=4"
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config("baseline")
  config.model.name = "resnet_tiny"
  model = model_context.create_model(config, prevalence=np.full(14, 0.05))
  loss_fn = losses.get_loss_fn(config.loss, num_pos=np.ones(14), num_total=10)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8),
              "labels": (rng.random((16, 14)) < 0.2).astype(np.float32)} for _ in range(3)]
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = model_context.make_mesh(devices)
    step, _ = train.jit_steps(mesh, loss_fn, model)
    state = jax.device_put(train.create_train_state(config, model, jax.random.key(0, impl="rbg"), 32),
                           jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    for b in batches:
      state, metrics = step(state, jax.device_put(b, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))))
    results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"])))
  one, four = results
  assert len(jax.tree.leaves(one)) == len(jax.tree.leaves(four))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class _Crash(Exception):
  pass


def test_resumed_run_equals_uninterrupted(tiny_data_dir, tmp_path, monkeypatch):
  config = tiny_config(tiny_data_dir)
  full = experiment.run(config, str(tmp_path / "full"))

  # Crash inside step 6 (after the step-4 checkpoint is saved), then rerun the same command. Every batch,
  # training or validation, goes to the devices through ModelContext.global_batch.
  original = model_context.ModelContext.global_batch
  calls = {"n": 0}

  def crashing(self, local):
    calls["n"] += 1
    if calls["n"] == 6:
      raise _Crash()
    return original(self, local)

  monkeypatch.setattr(model_context.ModelContext, "global_batch", crashing)
  with pytest.raises(_Crash):
    experiment.run(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(model_context.ModelContext, "global_batch", original)
  # The crash waited for the pending save: both checkpoints are complete.
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["2", "4"]
  resumed = experiment.run(config, str(tmp_path / "resumed"))

  assert resumed == full
  for a, b in zip(jax.tree.leaves(_params(str(tmp_path / "full"), 8)),
                  jax.tree.leaves(_params(str(tmp_path / "resumed"), 8))):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(l)["step"] for l in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert steps == [json.loads(l)["step"] for l in open(tmp_path / "full" / "metrics.jsonl")]


def test_non_finite_loss_names_step_and_keeps_last_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  real = losses.get_loss_fn

  def poisoned(config_loss, **kw):
    fn = real(config_loss, **kw)
    return lambda logits, labels, step: fn(logits, labels, step) * jnp.nan

  # First 4 good steps (checkpoints at 2 and 4), then the run extended to 8 steps with a loss that is NaN.
  train.train(tiny_config(tiny_data_dir, num_steps=4, eval_every=100), workdir)
  monkeypatch.setattr(losses, "get_loss_fn", poisoned)
  with pytest.raises(train.NonFiniteLossError, match=r"At step 5\b the loss is nan.*checkpoint \(step 4\)"):
    train.train(tiny_config(tiny_data_dir, num_steps=8, eval_every=100), workdir)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  monkeypatch.setattr(losses, "get_loss_fn", real)
  params = _params(workdir, 4)
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_finite_loss_with_non_finite_gradients_stops_before_any_save(tiny_data_dir, tmp_path, monkeypatch):
  """A loss whose value stays finite while its gradient is NaN (0 * sqrt(|x - x|)): the run stops at
  step 1, before the first checkpoint, and says that nothing was saved."""
  real = losses.get_loss_fn

  def finite_value_nan_gradient(config_loss, **kw):
    fn = real(config_loss, **kw)
    return lambda logits, labels, step: fn(logits, labels, step) + 0.0 * jnp.sqrt(jnp.abs(logits - logits))

  monkeypatch.setattr(losses, "get_loss_fn", finite_value_nan_gradient)
  with pytest.raises(train.NonFiniteLossError, match=r"At step 1\b the gradient norm is nan.*No checkpoint had "
                     r"been written yet: nothing was saved"):
    train.train(tiny_config(tiny_data_dir, num_steps=4, eval_every=100), str(tmp_path))
  assert not [n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()]


def test_validation_without_the_target_stops_before_training(tiny_data_dir, tmp_path):
  from jaxcxr.data import datasets  # pylint: disable=g-import-not-at-top
  config = tiny_config(tiny_data_dir)
  val = datasets.load_splits(config)["val"].meta.labels
  absent = [c for c, n in zip(nih.CLASSES, val.sum(0)) if n == 0 and c != "Hernia"]
  assert absent, "the tiny validation split holds every finding; the test needs one it lacks"
  config.data.target = absent[0]
  splits = datasets.load_splits(config)
  with pytest.raises(train.errors.ConfigError, match=f"validation split holds no {absent[0]}.*rank_by=macro"):
    train.train(config, str(tmp_path / "refused"), splits=splits)
  assert not os.path.exists(tmp_path / "refused" / "checkpoints")
  config.train.rank_by = "macro"  # The explicit opt-in: ranked by the macro AUPRC, named as such.
  train.train(config, str(tmp_path / "macro"), splits=splits)
  lines = [json.loads(l) for l in open(tmp_path / "macro" / "metrics.jsonl")]
  evals = [l for l in lines if "val_macro_auprc" in l]
  assert evals and all("val_target_auprc" not in l for l in evals)  # Undefined, so not logged.

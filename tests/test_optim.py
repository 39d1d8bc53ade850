"""Optimisers and schedules: Adam vs AdamW, CheXNet's reduce-on-plateau fed the validation loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import chexnet
from configs import demo
from jaxcxr import errors
from jaxcxr import experiment
from jaxcxr import model_context
from jaxcxr import train
from tests.helpers import tiny_config


def _state(config):
  model = model_context.create_model(config, prevalence=np.full(14, 0.05))
  return train.create_train_state(config, model, jax.random.key(0, impl="rbg"), 32)


def _plateau_config(**fields):
  config = demo.get_config("baseline")
  config.unlock()
  config.model.name = "resnet_tiny"
  config.train.optimizer, config.train.schedule = "adam", "plateau"
  config.train.warmup_steps = 0
  for k, v in fields.items():
    config.train[k] = v
  return config


def test_plateau_scale_follows_the_validation_loss():
  config = _plateau_config(plateau_factor=0.1, plateau_patience=2)
  state = _state(config)
  scales = []
  for val_loss in (1.0, 0.9, 0.95, 0.92, 0.91, 0.95, 0.96):
    state = train.observe_validation_loss(config, state, val_loss)
    scales.append(float(train.learning_rate_scale(state)))
  # Best 0.9 at the 2nd value; two evaluations without improvement decay once, then two more again.
  np.testing.assert_allclose(scales, [1, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_step_updates_are_scaled_by_the_plateau():
  config = _plateau_config(plateau_factor=0.5, plateau_patience=1)
  fresh = _state(config)
  decayed = fresh
  for val_loss in (1.0, 1.0):  # The second is no improvement: one decay by 0.5.
    decayed = train.observe_validation_loss(config, decayed, val_loss)
  assert float(train.learning_rate_scale(decayed)) == pytest.approx(0.5)
  grads = jax.tree.map(jnp.ones_like, fresh.params)
  step = lambda s: s.tx.update(grads, s.opt_state, s.params)[0]
  full, half = step(fresh), step(decayed)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
    np.testing.assert_allclose(np.asarray(b), 0.5 * np.asarray(a), rtol=1e-5, atol=1e-8)


def test_without_plateau_the_scale_is_one_and_observing_changes_nothing():
  config = demo.get_config("baseline")
  config.unlock()
  config.model.name = "resnet_tiny"
  state = _state(config)
  assert float(train.learning_rate_scale(state)) == 1.0
  after = train.observe_validation_loss(config, state, 3.0)
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(after.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("field,value", [("optimizer", "sgd"), ("schedule", "step")])
def test_unknown_optimizer_or_schedule_is_an_error(field, value):
  config = demo.get_config("baseline")
  config.unlock()
  config.train[field] = value
  with pytest.raises(ValueError, match=f"train.{field}"):
    train.create_optimizer(config)


def test_adam_without_weight_decay_is_plain_adam():
  config = _plateau_config(schedule="warmup_cosine", weight_decay=0.0, warmup_steps=0, num_steps=10)
  tx, _ = train.create_optimizer(config)
  import optax  # pylint: disable=g-import-not-at-top
  ref = optax.adam(optax.warmup_cosine_decay_schedule(0.0, config.train.learning_rate, 0, 10, 0.0))
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  g = {"w": jnp.full((2, 3), 0.3)}
  ours, _ = tx.update(g, tx.init(params), params)
  theirs, _ = ref.update(g, ref.init(params), params)
  np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-6)


def test_chexnet_config_is_the_published_recipe():
  config = chexnet.get_config()
  assert config.model.name == "densenet121" and config.data.image_size == 224
  assert (config.train.optimizer, config.train.schedule, config.train.learning_rate) == ("adam", "plateau", 1e-3)
  assert config.train.plateau_factor == 0.1 and config.train.batch_size == 16
  # The 14-class model optimised the sum of UNWEIGHTED binary cross-entropies (arXiv:1711.05225v3, section
  # 5); the weighted loss of its section 2.1 was the binary pneumonia model's.
  assert config.data.split == "random" and config.loss.name == "bce"
  with pytest.raises(AttributeError):  # Locked like every config: a misspelt field fails.
    config.train.learnin_rate = 1.0
  assert chexnet.get_config("").arm == "chexnet"
  with pytest.raises(errors.ConfigError, match="takes no config string"):  # Not silently ignored.
    chexnet.get_config("focal")


def test_plateau_run_logs_validation_loss_and_scaled_learning_rate(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, "baseline", num_steps=8, eval_every=2, checkpoint_every=2,
                       warmup_steps=0, log_every=2)
  config.unlock()
  config.train.optimizer, config.train.schedule = "adam", "plateau"
  config.train.plateau_patience = 1
  config.train.plateau_rtol = 0.9  # Only a 10x drop in validation loss counts: every evaluation decays.
  experiment.run(config, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  val = [l["val_loss"] for l in lines if "val_loss" in l]
  assert len(val) == 4 and all(np.isfinite(val))
  lrs = [l["learning_rate"] for l in lines if "learning_rate" in l]
  # Logged at steps 2, 4, 6, 8, each after the previous evaluations' decays (the first is the best).
  lr = config.train.learning_rate
  np.testing.assert_allclose(lrs, [lr, lr, lr / 10, lr / 100], rtol=1e-5)

"""DenseNet: shapes, features, parameter counts against torchvision's and bfloat16 compute.

(The prior head bias is the ResNet's code, tested in test_models.py; DenseNet's `init` is kept out of these
tests because it is slow to compile on CPU.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import models
from jaxcxr.models import densenet

# A DenseNet as small as the ResNet tests' tiny one, with the same code paths (blocks, transitions, concat).
TinyDenseNet = lambda **kw: densenet.DenseNet(block_config=(2, 2), growth_rate=4, bn_size=2, num_init_features=8,
                                              **kw)


def _init_shapes(model, size=32, **kwargs):
  """(output, variables) as shapes only: tracing, no compute."""
  return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, size, size, 1)),
                                                       train=False, **kwargs))


@pytest.fixture(scope="module")
def tiny():
  """A tiny DenseNet with random variables. Filled from numpy rather than `init`, whose random initialisers
  cost a compilation per parameter shape (seconds each on a busy 2-core machine)."""
  model = TinyDenseNet(num_classes=14)
  x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 1))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(0)
  fill = lambda path, s: jnp.asarray(
      rng.uniform(0.5, 1.5, s.shape) if path[-1].key == "var" else rng.normal(0, 0.3, s.shape), jnp.float32)
  return model, jax.tree_util.tree_map_with_path(fill, shapes), x


@pytest.mark.parametrize("name,torchvision_total,classifier_in,dtype", [
    ("densenet121", 7_978_856, 1024, jnp.float32),
    ("densenet169", 14_149_480, 1664, jnp.bfloat16),
])
def test_trunk_parameter_count_matches_torchvision(name, torchvision_total, classifier_in, dtype):
  (logits, _), shapes = _init_shapes(models.get_model(name, num_classes=14, dtype=dtype))
  params = shapes["params"]
  # torchvision's count less its 1000-class classifier and the two colour channels of the stem (2 * 64 * 7 * 7).
  trunk = sum(x.size for x in jax.tree.leaves(params)) - sum(x.size for x in jax.tree.leaves(params["head"]))
  assert trunk == torchvision_total - (classifier_in * 1000 + 1000) - 2 * 64 * 7 * 7
  assert params["head"]["kernel"].shape == (classifier_in, 14)
  assert params["conv_init"]["kernel"].shape == (7, 7, 1, 64)
  assert shapes["batch_stats"]["norm_final"]["mean"].shape == (classifier_in,)
  # Parameters and statistics stay float32 whatever the compute dtype; the logits are float32.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  assert logits.shape == (2, 14) and logits.dtype == jnp.float32
  if name == "densenet121":
    assert [k for k in params if k.startswith("denseblock")] == [f"denseblock{i}" for i in range(1, 5)]
    assert len(params["denseblock3"]) == 24 and len(params["denseblock4"]) == 16
    layer = params["denseblock1"]["denselayer6"]
    assert layer["norm1"]["scale"].shape == (64 + 5 * 32,)
    assert layer["conv1"]["kernel"].shape == (1, 1, 64 + 5 * 32, 128)
    assert layer["conv2"]["kernel"].shape == (3, 3, 128, 32)
    assert params["transition1"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert params["transition3"]["conv"]["kernel"].shape == (1, 1, 1024, 512)


def test_features_of_a_registered_densenet():
  (_, aux), _ = _init_shapes(models.get_model("densenet121", num_classes=5), size=64)
  feats = aux["pre_logits"]
  assert feats.shape == (2, 1024) and feats.dtype == jnp.float32


def test_logits_and_features(tiny):
  model, variables, x = tiny
  logits, aux = model.apply(variables, x, train=False)
  assert logits.shape == (3, 14) and logits.dtype == jnp.float32
  feats = aux["pre_logits"]
  # 8 stem channels + 2*4, halved to 8 by the transition, + 2*4 = 16.
  assert feats.shape == (3, 16) and feats.dtype == jnp.float32
  assert np.all(np.asarray(feats) >= 0)  # final BN -> ReLU -> mean
  # The logits are the head applied to the features.
  head = variables["params"]["head"]
  np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


def test_training_mode_updates_batch_stats(tiny):
  model, variables, x = tiny
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = variables["batch_stats"]["denseblock2"]["denselayer1"]["norm1"]["mean"]
  after = updates["batch_stats"]["denseblock2"]["denselayer1"]["norm1"]["mean"]
  assert not np.allclose(before, after)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  _, variables, x = tiny
  model = TinyDenseNet(num_classes=14, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  logits, aux = model.apply(variables, x, train=False)
  assert logits.dtype == jnp.float32
  assert aux["pre_logits"].dtype == jnp.float32
  np.testing.assert_allclose(logits, TinyDenseNet(num_classes=14).apply(variables, x, train=False)[0],
                             rtol=0.1, atol=0.1)

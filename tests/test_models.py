"""Model shapes, parameter counts against the canonical architectures, features and the prior bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr import models


def _param_count(name, size=224):
  model = models.get_model(name, num_classes=14)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)), train=False))
  params = shapes["params"]
  total = sum(x.size for x in jax.tree.leaves(params))
  head = sum(x.size for x in jax.tree.leaves(params["head"]))
  return total - head


@pytest.mark.parametrize("name,torchvision_trunk", [
    # torchvision's trunk counts (fc removed) less the two colour channels of the stem (2 * 64 * 7 * 7).
    ("resnet18", 11_176_512 - 6_272),
    ("resnet34", 21_284_672 - 6_272),
    ("resnet50", 23_508_032 - 6_272),
    ("resnet101", 42_500_160 - 6_272),
    ("resnet152", 58_143_808 - 6_272),
])
def test_trunk_parameter_counts_match_torchvision(name, torchvision_trunk):
  assert _param_count(name) == torchvision_trunk


def test_logits_and_features_shapes():
  model = models.get_model("resnet_tiny", num_classes=14)
  x = jnp.zeros((3, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  logits, aux = model.apply(variables, x, train=False)
  assert logits.shape == (3, 14)
  feats = aux["pre_logits"]
  assert feats.shape == (3, 16) and feats.dtype == jnp.float32
  assert aux["feature_map"].shape == (3, 4, 4, 16)  # 32 px: /4 in the stem, /2 in stage 2.
  head = variables["params"]["head"]
  np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats, aux["feature_map"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_prior_bias_makes_initial_probabilities_equal_prevalence():
  from configs import demo  # pylint: disable=g-import-not-at-top
  from jaxcxr import model_context  # pylint: disable=g-import-not-at-top  (the config -> head bias path)
  prevalence = np.linspace(0.002, 0.3, 14)
  config = demo.get_config("baseline")
  config.unlock()
  config.model.name, config.model.head_bias = "resnet_tiny", "prior"
  x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 1))
  for head_bias, expected in (("prior", prevalence), ("zero", np.full(14, 0.5))):
    config.model.head_bias = head_bias
    model = model_context.create_model(config, prevalence=prevalence)
    variables = model.init(jax.random.key(0), x, train=False)
    # With the head's kernel at zero the logits are the bias alone: the probabilities are the prior.
    params = {**variables["params"], "head": {**variables["params"]["head"],
                                              "kernel": jnp.zeros_like(variables["params"]["head"]["kernel"])}}
    probs = jax.nn.sigmoid(model.apply({**variables, "params": params}, x, train=False)[0])
    np.testing.assert_allclose(probs, np.broadcast_to(expected, (3, 14)), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.get_model("resnet_tiny", num_classes=14, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert model.apply(variables, x, train=False)[0].dtype == jnp.float32


def test_unknown_model_name_lists_choices():
  with pytest.raises(ValueError, match="resnet50"):
    models.get_model("resnet51", num_classes=14)

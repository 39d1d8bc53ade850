"""jaxcxr's max-pool equals Flax's in values and gradients (which element of a tied window gets it too)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.models import pooling

CASES = [  # (window, strides, padding)
    ((3, 3), (2, 2), ((1, 1), (1, 1))),  # The ResNet/DenseNet stem.
    ((2, 2), (2, 2), ((0, 0), (0, 0))),
    ((3, 2), (1, 2), ((1, 0), (0, 1))),
    ((3, 3), (1, 1), ((2, 2), (2, 2))),  # Padding of window - 1: edge windows hold one real element.
]


def _input(dtype):
  # Small integers after a ReLU: most windows hold ties (zeros, repeated values).
  x = jnp.round(jax.random.normal(jax.random.key(0), (3, 11, 10, 5)) * 2)
  return jax.nn.relu(x).astype(dtype)


@pytest.mark.parametrize("window,strides,padding", CASES)
def test_values_and_gradients_equal_flax(window, strides, padding):
  x = _input(jnp.float32)
  ref = lambda a: nn.max_pool(a, window, strides=strides, padding=padding)
  ours = lambda a: pooling.max_pool(a, window, strides, padding, backend="cpu")
  y_ref, vjp_ref = jax.vjp(ref, x)
  y, vjp = jax.jit(lambda a: jax.vjp(ours, a))(x)
  np.testing.assert_array_equal(y, y_ref)
  cot = jax.random.normal(jax.random.key(1), y.shape)
  (g_ref,), (g,) = vjp_ref(cot), vjp(cot)
  assert np.sum(np.asarray(x) == 0) > x.size // 3  # The test does exercise ties.
  np.testing.assert_array_equal(g != 0, g_ref != 0)  # The same element of each window gets the gradient.
  np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-7)  # Overlapping windows' shares, summed.
  assert "select_and_scatter" not in jax.jit(jax.grad(lambda a: jnp.sum(ours(a) * cot))).lower(x).as_text()


def test_bfloat16_gradients_go_to_the_same_elements():
  x = _input(jnp.bfloat16)
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  y, vjp = jax.vjp(lambda a: pooling.max_pool(a, *args, backend="cpu"), x)
  y_ref, vjp_ref = jax.vjp(lambda a: nn.max_pool(a, args[0], strides=args[1], padding=args[2]),
                           x.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(y, np.float32), y_ref)
  cot = jax.random.normal(jax.random.key(1), y.shape)
  (g,), (g_ref,) = vjp(cot.astype(jnp.bfloat16)), vjp_ref(cot)
  assert g.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(g, np.float32) != 0, g_ref != 0)
  np.testing.assert_allclose(np.asarray(g, np.float32), g_ref, rtol=2**-7, atol=1e-2)


def test_other_backends_and_all_padding_windows_use_flax():
  x = _input(jnp.float32)
  text = lambda f: jax.jit(jax.grad(lambda a: jnp.sum(f(a)))).lower(x).as_text()
  assert "select_and_scatter" in text(lambda a: pooling.max_pool(a, (3, 3), (2, 2), ((1, 1), (1, 1)),
                                                                 backend="gpu"))
  # Padding as wide as the window: some windows read only padding, left to Flax (-inf there).
  assert "select_and_scatter" in text(lambda a: pooling.max_pool(a, (2, 2), (1, 1), ((2, 2), (2, 2)),
                                                                 backend="cpu"))

"""The patches + matmul convolution equals lax.conv_general_dilated, in values and in gradients."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcxr.models import conv

DIMS = ("NHWC", "HWIO", "NHWC")

CASES = [  # (input side, kernel side, stride, padding)
    (1, 3, 1, ((1, 1), (1, 1))),  # ResNet-18's last stage at 28 px: only the centre tap is live.
    (2, 3, 1, ((1, 1), (1, 1))),  # ... at 64 px.
    (2, 3, 2, ((1, 1), (1, 1))),  # The strided block entering a 1x1 stage: 4 live taps.
    (4, 3, 2, ((1, 1), (1, 1))),  # ... entering a 2x2 stage.
    (4, 3, 1, ((1, 1), (1, 1))),
    (8, 3, 2, ((1, 1), (1, 1))),
    (2, 3, 1, "SAME"),
    (3, 3, 2, "SAME"),  # Flax's SAME pads (0, 1) on even sizes and (1, 1) here.
    (4, 3, 2, "SAME"),
    (2, 2, 1, "VALID"),
    (4, 1, 2, "VALID"),  # The 1x1 stride-2 projection shortcut.
    (2, 1, 1, "SAME"),
    (5, 3, 2, ((0, 2), (2, 0))),  # Asymmetric explicit padding.
    (3, 3, 1, ((-1, 1), (1, -1))),  # Negative padding crops, as in lax.
]


def _inputs(size, kernel, cin=5, cout=7, batch=3):
  kx, kw = jax.random.split(jax.random.key(size * 100 + kernel))
  x = jax.random.normal(kx, (batch, size, size, cin), jnp.float32)
  w = jax.random.normal(kw, (kernel, kernel, cin, cout), jnp.float32) / np.sqrt(kernel * kernel * cin)
  return x, w


def _value_and_grads(f, x, w, cot):
  """f(x, w), and the gradients of <f(x, w), cot> with respect to x and w, jitted."""
  return jax.jit(lambda a, b: (f(a, b), jax.grad(lambda a, b: jnp.sum(f(a, b) * cot), argnums=(0, 1))(a, b)))(
      x, w)


@pytest.mark.parametrize("size,kernel,stride,padding", CASES)
def test_matmul_path_equals_xla_convolution_in_values_and_gradients(size, kernel, stride, padding):
  x, w = _inputs(size, kernel)
  kw = dict(window_strides=(stride, stride), padding=padding)
  ref = lambda a, b: lax.conv_general_dilated(a, b, dimension_numbers=DIMS, **kw)
  out_shape = jax.eval_shape(ref, x, w).shape
  cot = jax.random.normal(jax.random.key(7), out_shape)  # A non-uniform cotangent.
  y_ref, g_ref = _value_and_grads(ref, x, w, cot)
  for f in (lambda a, b: conv.conv_as_matmul(a, b, **kw),  # The rewrite itself, whatever the map size.
            lambda a, b: conv.conv_general_dilated(a, b, dimension_numbers=DIMS, **kw)):  # The drop-in.
    y, g = _value_and_grads(f, x, w, cot)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref):  # Input and kernel gradients.
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The drop-in takes the matmul path exactly for tiny output maps on CPU: then its program has no
  # convolution left.
  expect_matmul = jax.default_backend() == "cpu" and out_shape[1] * out_shape[2] <= conv.MAX_MATMUL_PIXELS
  assert conv.uses_matmul(x.shape, w.shape, dimension_numbers=DIMS, **kw) == expect_matmul
  hlo = jax.jit(lambda a, b: conv.conv_general_dilated(a, b, dimension_numbers=DIMS, **kw)).lower(x, w).as_text()
  assert ("convolution" not in hlo) == expect_matmul


def test_only_plain_cpu_convolutions_take_the_matmul_path():
  shape_x, shape_w = (2, 2, 2, 4), (3, 3, 4, 4)
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DIMS)
  assert conv.uses_matmul(shape_x, shape_w, **kw, backend="cpu")
  assert not conv.uses_matmul(shape_x, shape_w, **kw, backend="gpu")
  assert not conv.uses_matmul(shape_x, shape_w, **kw, backend="tpu")
  assert not conv.uses_matmul(shape_x, shape_w, **{**kw, "dimension_numbers": ("NCHW", "OIHW", "NCHW")},
                              backend="cpu")
  assert not conv.uses_matmul(shape_x, shape_w, **kw, rhs_dilation=(2, 2), backend="cpu")
  assert not conv.uses_matmul(shape_x, shape_w, **kw, feature_group_count=2, backend="cpu")
  assert not conv.uses_matmul((2, 8, 8, 4), shape_w, **kw, backend="cpu")  # 8x8 output: XLA's own.


def test_live_taps():
  # 3x3 kernel, pad 1: over a 1x1 map only the centre reads data; over 2x2 every tap does.
  assert conv.live_taps(1, kernel=3, stride=1, pad=(1, 1)) == [1]
  assert conv.live_taps(2, kernel=3, stride=1, pad=(1, 1)) == [0, 1, 2]
  assert conv.live_taps(2, kernel=3, stride=2, pad=(1, 1)) == [1, 2]
  # Stride larger than the input: live offsets need not be contiguous.
  assert conv.live_taps(1, kernel=5, stride=3, pad=(3, 4)) == [0, 3]


def test_non_contiguous_live_taps_equal_xla():
  x, w = _inputs(1, 5)
  pad = ((3, 4), (3, 4))
  kw = dict(window_strides=(3, 3), padding=pad)
  ref = lambda a, b: lax.conv_general_dilated(a, b, dimension_numbers=DIMS, **kw)
  ours = lambda a, b: conv.conv_as_matmul(a, b, **kw)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda a, b: jnp.sum(ours(a, b) ** 2), argnums=(0, 1))(x, w)
  g_ref = jax.grad(lambda a, b: jnp.sum(ref(a, b) ** 2), argnums=(0, 1))(x, w)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_flax_conv_with_the_drop_in_keeps_parameters_and_values():
  x, _ = _inputs(2, 3, cin=16)
  mk = lambda **kw: nn.Conv(32, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, **kw)
  variables = mk().init(jax.random.key(0), x)
  ours = mk(conv_general_dilated=conv.conv_general_dilated)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_allclose(ours.apply(variables, x), mk().apply(variables, x), rtol=1e-5, atol=1e-5)


def test_resnet_output_and_gradients_equal_with_xla_convolutions(monkeypatch):
  """A whole ResNet at 28 px (third stage 2x2, last stage 1x1): logits and parameter gradients.

  Inference-mode BatchNorm: with batch statistics over a few images of a 1x1 map, a ReLU after a
  near-zero variance flips on rounding differences, which would test BatchNorm, not the convolutions.
  """
  from jaxcxr import models  # pylint: disable=g-import-not-at-top
  model = models.get_model("resnet10_w16", num_classes=3)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  # Non-zero residual-branch scales, so every convolution reaches the output.
  variables = jax.tree.map(lambda v: v + 0.1, variables)

  def make_loss():  # A new function each time: jit's trace cache must not hand back the first trace.
    def loss(params):
      out = model.apply({**variables, "params": params}, x, train=False)
      logits = out[0] if isinstance(out, tuple) else out  # Models may return (logits, extras).
      return jnp.sum(jnp.tanh(logits)), logits
    return loss

  run = lambda: jax.jit(jax.value_and_grad(make_loss(), has_aux=True))(variables["params"])
  convolutions = lambda: jax.jit(make_loss()).lower(variables["params"]).as_text().count("convolution")
  (_, logits), grads = run()
  n_ours = convolutions()
  monkeypatch.setattr(conv, "MAX_MATMUL_PIXELS", 0)  # Every convolution through XLA's.
  (_, logits_ref), grads_ref = run()
  assert n_ours < convolutions()  # The two runs did compute differently.
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

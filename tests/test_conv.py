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


TAP_CASES = [  # (input side, kernel side, stride, padding, input channels, how the kernel gradient multiplies)
    (8, 3, 1, ((1, 1), (1, 1)), 8, "patches"),  # ResNet's 3x3 blocks over 64 channels: one matmul, patches.
    (8, 3, 1, ((1, 1), (1, 1)), 72, "per_tap"),  # Wider patches (ResNet's 128 channels and up).
    (9, 3, 2, ((1, 1), (1, 1)), 8, "patches"),  # The strided block entering a stage.
    (8, 1, 2, ((0, 0), (0, 0)), 8, "per_tap"),  # The 1x1 projection shortcut: one tap.
    (12, 7, 2, ((3, 3), (3, 3)), 1, "concatenated"),  # The grey stem: one matmul over all 49 taps' patches.
    (8, 3, 2, "SAME", 9, "patches"),  # Flax's SAME pads (0, 1) here.
    (6, 2, 1, ((0, 2), (2, 0)), 8, "patches"),  # Asymmetric explicit padding.
]


@pytest.mark.parametrize("size,kernel,stride,padding,cin,how", TAP_CASES)
def test_tap_kernel_gradient_equals_xla_convolution(monkeypatch, size, kernel, stride, padding, cin, how):
  monkeypatch.setattr(conv, "MIN_TAP_GRAD_PIXELS", 1)  # Small maps take the path too, for a quick test.
  x, w = _inputs(size, kernel, cin=cin, cout=6)
  kw = dict(window_strides=(stride, stride), padding=padding)
  assert conv.uses_tap_kernel_grad(x.shape, w.shape, dimension_numbers=DIMS, backend="cpu", **kw)
  ref = lambda a, b: lax.conv_general_dilated(a, b, dimension_numbers=DIMS, **kw)
  ours = lambda a, b: conv.conv_general_dilated(a, b, dimension_numbers=DIMS, **kw)
  cot = jax.random.normal(jax.random.key(7), jax.eval_shape(ref, x, w).shape)
  y_ref, (dx_ref, dw_ref) = _value_and_grads(ref, x, w, cot)
  y, (dx, dw) = _value_and_grads(ours, x, w, cot)
  np.testing.assert_array_equal(y, y_ref)  # XLA's own forward and input gradient.
  np.testing.assert_array_equal(dx, dx_ref)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)  # The same sums in another order.
  if jax.default_backend() == "cpu":  # The kernel gradient really is computed by matmuls, as many as said.
    grad_w = jax.jit(jax.grad(lambda b: jnp.sum(ours(x, b) * cot))).lower(w).as_text()
    assert "convolution" not in grad_w
    assert conv.kernel_grad_matmuls(w.shape) == how
    assert grad_w.count("stablehlo.dot_general") == (kernel * kernel if how == "per_tap" else 1)


def test_only_large_plain_cpu_maps_take_the_tap_kernel_gradient():
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DIMS)
  big, small, w = (2, 16, 16, 8), (2, 15, 15, 8), (3, 3, 8, 8)
  assert conv.MIN_TAP_GRAD_PIXELS == 256
  assert conv.uses_tap_kernel_grad(big, w, **kw, backend="cpu")
  assert not conv.uses_tap_kernel_grad(small, w, **kw, backend="cpu")  # 225 output pixels.
  assert not conv.uses_tap_kernel_grad(big, w, **kw, backend="gpu")
  assert not conv.uses_tap_kernel_grad(big, w, **{**kw, "dimension_numbers": ("NCHW", "OIHW", "NCHW")},
                                       backend="cpu")
  assert not conv.uses_tap_kernel_grad(big, w, **kw, rhs_dilation=(2, 2), backend="cpu")
  assert not conv.uses_tap_kernel_grad(big, (3, 3, 4, 8), **kw, feature_group_count=2, backend="cpu")


def test_resnet_at_64px_equals_xla_convolutions_and_flax_pooling(monkeypatch):
  """A ResNet at 64 px, train-mode BatchNorm: the stem's map (32x32) and the first stage's (16x16) take
  the tap kernel gradient, the stem's pool is jaxcxr's, the last stage (2x2) the matmul path; logits and
  parameter gradients equal those with XLA's convolutions and Flax's pool."""
  import flax.linen as flax_nn  # pylint: disable=g-import-not-at-top
  from jaxcxr import models  # pylint: disable=g-import-not-at-top
  from jaxcxr.models import pooling  # pylint: disable=g-import-not-at-top
  model = models.get_model("resnet10_w16", num_classes=3)
  x = jax.random.uniform(jax.random.key(1), (4, 64, 64, 1))
  variables = model.init(jax.random.key(0), x, train=False)

  def make_loss():
    def loss(params):
      (logits, _), _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.tanh(logits)), logits
    return loss

  run = lambda: jax.jit(jax.value_and_grad(make_loss(), has_aux=True))(variables["params"])
  program = lambda: jax.jit(jax.grad(lambda p: make_loss()(p)[0])).lower(variables["params"]).as_text()
  (_, logits), grads = run()
  ours = program()
  monkeypatch.setattr(conv, "MAX_MATMUL_PIXELS", 0)
  monkeypatch.setattr(conv, "MIN_TAP_GRAD_PIXELS", 10**9)
  monkeypatch.setattr(pooling, "max_pool",
                      lambda x, w, s, p: flax_nn.max_pool(x, w, strides=s, padding=p))
  (_, logits_ref), grads_ref = run()
  reference = program()
  if jax.default_backend() == "cpu":  # The two runs did compute differently.
    assert "select_and_scatter" in reference and "select_and_scatter" not in ours
    assert ours.count("convolution") < reference.count("convolution")
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-5)
  for path, a in jax.tree_util.tree_leaves_with_path(grads):
    b = grads_ref
    for k in path:
      b = b[k.key]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))

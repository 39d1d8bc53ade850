"""Max-pooling whose backward pass is fast on XLA:CPU, with the same values and gradients as Flax's.

Why: `flax.linen.max_pool` is `lax.reduce_window`, whose gradient XLA computes with select-and-scatter. On
XLA:CPU that is slow: for the stem's 3x3/2 pool of ResNet-18 at 128 px (batch 64, 64 channels) the
backward took 654 ms against 41 ms for the forward (`benchmarks/xla_cpu_small_conv.py --pool`,
BENCHMARKS.md), about a tenth of the whole train step.

What: `max_pool` takes the maximum over the window's strided slices of the input padded with -inf (the
forward is the same maximum, so values are identical). Its backward is written out (`jax.custom_vjp`):
for the window offsets in row-major order, each output's gradient goes to the first offset whose value
equals the maximum, which is the element select-and-scatter chooses (it keeps the current element
unless a later one is strictly greater), so gradients are identical too, ties included. Each offset's
share is put back in place with `lax.pad` (interior padding undoes the stride), the transpose of the
slice. Only the CPU backend takes this path; elsewhere `flax.linen.max_pool` runs unchanged.
"""

import functools
from typing import Sequence, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxcxr.models import conv


def _offsets(window):
  return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _geometry(shape, window, strides, padding):
  (ph, pw) = padding
  hp, wp = shape[1] + ph[0] + ph[1], shape[2] + pw[0] + pw[1]
  out_hw = ((hp - window[0]) // strides[0] + 1, (wp - window[1]) // strides[1] + 1)
  return (hp, wp), out_hw


def _pad_input(x, padding):
  low = jnp.array(-jnp.inf, x.dtype)
  return lax.pad(x, low, ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_2d(x, window, strides, padding):
  xp = _pad_input(x, padding)
  _, out_hw = _geometry(x.shape, window, strides, padding)
  return functools.reduce(jnp.maximum, (conv.tap_slice(xp, i, j, strides=strides, out_hw=out_hw)
                                        for i, j in _offsets(window)))


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool_2d(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
  x, y = residuals
  xp = _pad_input(x, padding)
  (hp, wp), out_hw = _geometry(x.shape, window, strides, padding)
  zero = jnp.zeros((), jnp.float32)  # Shares are summed in float32 (several windows overlap an element).
  g32 = g.astype(jnp.float32)
  taken = jnp.zeros(y.shape, bool)
  grad = jnp.zeros(xp.shape, jnp.float32)
  for (i, j) in _offsets(window):
    first = (conv.tap_slice(xp, i, j, strides=strides, out_hw=out_hw) == y) & ~taken
    taken = taken | first
    share = jnp.where(first, g32, zero)
    # Transpose of the strided slice: put each output's share back at row i + sh * r, column j + sw * c.
    rows_after = hp - (i + strides[0] * (out_hw[0] - 1) + 1)
    cols_after = wp - (j + strides[1] * (out_hw[1] - 1) + 1)
    grad = grad + lax.pad(share, zero, ((0, 0, 0), (i, rows_after, strides[0] - 1),
                                        (j, cols_after, strides[1] - 1), (0, 0, 0)))
  (ph, pw) = padding
  return (grad[:, ph[0]:hp - ph[1], pw[0]:wp - pw[1], :].astype(g.dtype),)


_max_pool_2d.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int],
             padding: Sequence[Tuple[int, int]], *, backend=None):
  """`flax.linen.max_pool(x, window_shape, strides, padding)` for NHWC `x` with explicit padding.

  On the CPU backend the pool and its gradient are computed as described in the module docstring (same
  values, same gradients); on other backends, and for other layouts, it is Flax's pool.
  """
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  window, strides = tuple(window_shape), tuple(strides)
  if (backend or jax.default_backend()) != "cpu" or x.ndim != 4 or len(window) != 2 or len(padding) != 2:
    return nn.max_pool(x, window, strides=strides, padding=padding)
  if any(p < 0 for pair in padding for p in pair) or any(p >= k for pair, k in zip(padding, window)
                                                           for p in pair):
    return nn.max_pool(x, window, strides=strides, padding=padding)  # Windows of padding only: Flax's.
  return _max_pool_2d(x, window, strides, padding)

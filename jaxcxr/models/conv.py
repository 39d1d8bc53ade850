"""A drop-in for `lax.conv_general_dilated` that computes convolutions over tiny maps as one matmul on CPU.

Why: XLA:CPU runs a 3x3 convolution whose output map is 1x1 or 2x2 (256-512 channels) 25-100 times slower
per FLOP than the same convolution over a 4x4 map (`benchmarks/xla_cpu_small_conv.py` reproduces it).
ResNet-18's last stage is 2x2 at 64 px input and 1x1 at ChestMNIST's 28 px, so on CPU those few layers
took most of the train step.

What: `conv_general_dilated` has `lax.conv_general_dilated`'s signature (Flax's `nn.Conv` takes it as its
`conv_general_dilated` attribute, so parameters, their names and shapes do not change). For a plain 2-D
NHWC x HWIO convolution (no dilation, no feature groups) whose output map has at most
`MAX_MATMUL_PIXELS` pixels, traced for the CPU backend, it pads the input explicitly, takes one strided
slice of it per kernel tap, concatenates the slices along the channels (im2col) and multiplies by the
kernel reshaped to (taps * Cin, Cout): the same sums as the convolution. Taps whose every read lands in
the zero padding (e.g. the 8 outer taps of a 3x3 kernel over a 1x1 map) contribute exact zeros and are
left out. Everything else, and every other backend, goes to `lax.conv_general_dilated` unchanged.
Gradients follow by autodiff (slices transpose to pads, the matmul to matmuls).

Larger maps keep XLA's convolution for the forward pass and the input gradient, but XLA:CPU computes
the kernel gradient of a convolution over a large map (16x16 and up) 1.5-2x slower than the same sums
as matmuls (`benchmarks/xla_cpu_small_conv.py --kernel_grad`). There (`uses_tap_kernel_grad`), a
`jax.custom_vjp` keeps XLA's forward and input gradient and computes the kernel gradient as one
(Cin x N*Ho*Wo) @ (N*Ho*Wo x Cout) matmul per kernel tap, or, where the patches of all taps together are
narrow (the grey stem: 49 taps of one channel; ResNet's first stage: 9 taps of 64 channels), as one matmul
over the patches. On the project's 2-core machine that one wider matmul uses the second core better than
the per-tap ones (64 x 64 outputs, a contraction over N*Ho*Wo), and more than pays for building the
patches: at 32x32 x 64 channels, batch 64, 123 ms against 135 ms with huge pages (175 against 182 ms
without), 30 against 33 ms at 16x16 (`benchmarks/xla_cpu_small_conv.py --kernel_grad`, BENCHMARKS.md).
The values are XLA's; the kernel gradient sums the same products in another order (equal to 1e-5).
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

# Output maps with at most this many pixels (per image) take the matmul path on CPU. Measured with
# benchmarks/xla_cpu_small_conv.py (512 channels, batch 64; BENCHMARKS.md): at 2x2 the matmul takes 61-115 ms
# where XLA's convolution takes 8-12 s, at 1x1 33 ms against 112 ms; at 4x4 they are even (250-400 ms each),
# so larger maps stay with XLA.
MAX_MATMUL_PIXELS = 4
# Output maps with at least this many pixels get the tap-matmul kernel gradient on CPU (measured with
# `benchmarks/xla_cpu_small_conv.py --kernel_grad`, batch 64, 2026-12-01: at 32x32 x 64 channels 135 ms per
# tap against XLA's 203 ms, at 16x16 x 128 82 ms against 129 ms; at 8x8 x 128 XLA's is faster, 10 against 11).
MIN_TAP_GRAD_PIXELS = 256
# Inputs with fewer channels than this take the kernel gradient as one matmul over all taps' patches,
# concatenated (the grey stem's 49 one-channel taps).
FEW_CHANNELS = 8
# Convolutions with more than one tap whose patches (taps x Cin) are at most this wide also take one matmul,
# over patches built as a sum of zero-padded slices: ResNet's 3x3 x 64-channel convolutions (576). At 128
# channels (1152) the per-tap matmuls are as fast (BENCHMARKS.md).
MAX_PATCH_WIDTH = 576

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, ndim):
  if ndim != 4 or dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers((1,) * 4, (1,) * 4, _NHWC)
  return tuple(dimension_numbers) == _NHWC


def output_size(size, *, kernel, stride, pad):
  """Output length along one axis of a convolution with explicit `pad` = (low, high)."""
  return (size + pad[0] + pad[1] - kernel) // stride + 1


def live_taps(size, *, kernel, stride, pad):
  """Kernel offsets along one axis whose reads touch at least one real (non-padding) element."""
  out = output_size(size, kernel=kernel, stride=stride, pad=pad)
  return [k for k in range(kernel)
          if any(pad[0] <= k + stride * o < pad[0] + size for o in range(out))]


def _plain_cpu_conv(lhs_shape, dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count,
                    batch_group_count, backend):
  """A 2-D NHWC x HWIO convolution without dilation or groups, traced for the CPU backend."""
  if (backend or jax.default_backend()) != "cpu":
    return False
  if not _is_nhwc(dimension_numbers, len(lhs_shape)) or feature_group_count != 1 or batch_group_count != 1:
    return False
  return all(d == 1 for d in (lhs_dilation or ())) and all(d == 1 for d in (rhs_dilation or ()))


def uses_matmul(lhs_shape, rhs_shape, *, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1, backend=None):
  """Whether `conv_general_dilated` takes the patches + matmul path for these static arguments."""
  if not _plain_cpu_conv(lhs_shape, dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count,
                         batch_group_count, backend):
    return False
  pads = _pads(lhs_shape, rhs_shape, window_strides, padding)
  pixels = 1
  for a in range(2):
    axis = dict(kernel=rhs_shape[a], stride=window_strides[a], pad=pads[a])
    out = output_size(lhs_shape[1 + a], **axis)
    if out < 1 or not live_taps(lhs_shape[1 + a], **axis):
      return False  # Degenerate (empty output, or all of it read from padding): left to XLA.
    pixels *= out
  return pixels <= MAX_MATMUL_PIXELS


def uses_tap_kernel_grad(lhs_shape, rhs_shape, *, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         backend=None):
  """Whether `conv_general_dilated` keeps XLA's forward but computes the kernel gradient as matmuls."""
  if not _plain_cpu_conv(lhs_shape, dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count,
                         batch_group_count, backend):
    return False
  pads = _pads(lhs_shape, rhs_shape, window_strides, padding)
  if any(p < 0 for pair in pads for p in pair):
    return False
  pixels = 1
  for a in range(2):
    pixels *= output_size(lhs_shape[1 + a], kernel=rhs_shape[a], stride=window_strides[a], pad=pads[a])
  return pixels >= MIN_TAP_GRAD_PIXELS


def kernel_grad_matmuls(rhs_shape):
  """How the tap kernel gradient multiplies, for an HWIO kernel of this shape: 'concatenated' (few input
  channels: one matmul over the concatenated patches), 'patches' (narrow patches: one matmul over patches
  built from zero-padded slices) or 'per_tap' (one matmul per kernel tap)."""
  kh, kw, cin, _ = rhs_shape
  if cin < FEW_CHANNELS:
    return "concatenated"
  if 1 < kh * kw and kh * kw * cin <= MAX_PATCH_WIDTH:
    return "patches"
  return "per_tap"


def _pads(lhs_shape, rhs_shape, window_strides, padding):
  """Explicit (low, high) padding of the two spatial axes."""
  if isinstance(padding, str):
    return lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], window_strides, padding)
  return [tuple(p) for p in padding]


def _take(x, taps, axis):
  """`x` restricted to the kernel offsets `taps` along `axis` (a slice when they are contiguous)."""
  if taps == list(range(taps[0], taps[-1] + 1)):
    return lax.slice_in_dim(x, taps[0], taps[-1] + 1, axis=axis)
  return jnp.take(x, jnp.asarray(taps), axis=axis)


def tap_slice(x, i, j, *, strides, out_hw):
  """The (N, Ho, Wo, C) inputs that kernel (or pooling window) offset (i, j) reads from the padded `x`."""
  (sh, sw), (ho, wo) = strides, out_hw
  n, _, _, c = x.shape
  return lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))


def conv_as_matmul(lhs, rhs, *, window_strides, padding, precision=None, preferred_element_type=None):
  """A 2-D NHWC x HWIO convolution as explicit padding + strided slices (im2col) + one matmul."""
  n, h, w, cin = lhs.shape
  kh, kw, _, cout = rhs.shape
  (sh, sw), (ph, pw) = window_strides, _pads(lhs.shape, rhs.shape, window_strides, padding)
  ho, wo = output_size(h, kernel=kh, stride=sh, pad=ph), output_size(w, kernel=kw, stride=sw, pad=pw)
  rows, cols = live_taps(h, kernel=kh, stride=sh, pad=ph), live_taps(w, kernel=kw, stride=sw, pad=pw)
  # lax.pad also takes negative padding (cropping), as lax.conv_general_dilated does.
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (*ph, 0), (*pw, 0), (0, 0, 0)))
  patches = [tap_slice(x, i, j, strides=(sh, sw), out_hw=(ho, wo)) for i in rows for j in cols]
  patches = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
  # Row-major (tap row, tap column, input channel), the order the patches were concatenated in.
  kernel = _take(_take(rhs, rows, 0), cols, 1).reshape(-1, cout)
  out = lax.dot_general(patches.reshape(n * ho * wo, -1), kernel, (((1,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=preferred_element_type)
  return out.reshape(n, ho, wo, cout)


def _xla_conv(lhs, rhs, strides, pads, precision):
  return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_tap_kernel_grad(lhs, rhs, strides, pads, precision):
  return _xla_conv(lhs, rhs, strides, pads, precision)


def _tap_fwd(lhs, rhs, strides, pads, precision):
  return _xla_conv(lhs, rhs, strides, pads, precision), (lhs, rhs)


def _tap_bwd(strides, pads, precision, residuals, g):
  lhs, rhs = residuals
  # The input gradient: XLA's own transposed convolution (dropped by XLA when nothing uses it).
  _, input_vjp = jax.vjp(lambda a: _xla_conv(a, rhs, strides, pads, precision), lhs)
  (d_lhs,) = input_vjp(g)
  kh, kw, cin, cout = rhs.shape
  out_hw = g.shape[1:3]
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  g2 = g.reshape(-1, cout)
  contract_rows = (((0,), (0,)), ((), ()))  # (M x Cin)^T @ (M x Cout) without materialising a transpose.
  taps = [tap_slice(x, i, j, strides=strides, out_hw=out_hw) for i in range(kh) for j in range(kw)]
  how = kernel_grad_matmuls(rhs.shape)
  if how == "concatenated":
    patches = jnp.concatenate(taps, axis=-1)
    d_rhs = lax.dot_general(patches.reshape(-1, kh * kw * cin), g2, contract_rows, precision=precision)
  elif how == "patches":
    # The same (M, taps * Cin) patches as a concatenation, but XLA:CPU writes this sum of zero-padded
    # slices (one fused loop) faster than its concatenate. Cout x (taps * Cin) is the faster orientation.
    width = len(taps) * cin
    zero = jnp.zeros((), x.dtype)
    padded = [lax.pad(t.reshape(-1, cin), zero, ((0, 0, 0), (k * cin, width - (k + 1) * cin, 0)))
              for k, t in enumerate(taps)]
    patches = sum(padded[1:], padded[0])
    d_rhs = lax.dot_general(g2, patches, contract_rows, precision=precision).T
  else:
    d_rhs = jnp.stack([lax.dot_general(t.reshape(-1, cin), g2, contract_rows, precision=precision) for t in taps])
  return d_lhs, d_rhs.reshape(kh, kw, cin, cout).astype(rhs.dtype)


_conv_tap_kernel_grad.defvjp(_tap_fwd, _tap_bwd)


@functools.wraps(lax.conv_general_dilated)
def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count, batch_group_count=batch_group_count)
  if uses_matmul(lhs.shape, rhs.shape, window_strides=tuple(window_strides), padding=padding, **kwargs):
    return conv_as_matmul(lhs, rhs, window_strides=tuple(window_strides), padding=padding, precision=precision,
                          preferred_element_type=preferred_element_type)
  if preferred_element_type is None and uses_tap_kernel_grad(
      lhs.shape, rhs.shape, window_strides=tuple(window_strides), padding=padding, **kwargs):
    pads = tuple(tuple(p) for p in _pads(lhs.shape, rhs.shape, tuple(window_strides), padding))
    return _conv_tap_kernel_grad(lhs, rhs, tuple(window_strides), pads, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, precision=precision,
                                  preferred_element_type=preferred_element_type, **kwargs)

"""XLA:CPU runs 3x3 convolutions over tiny feature maps (1x1, 2x2) far slower per FLOP than over 4x4.

A standalone reproduction (needs only jax and numpy), ready to attach to an upstream report:

  python benchmarks/xla_cpu_small_conv.py                      # 512 channels, batch 64, maps 1, 2, 4, 8
  python benchmarks/xla_cpu_small_conv.py --channels=256 --sizes=1,2,4
  XLA_FLAGS=--some_flag python benchmarks/xla_cpu_small_conv.py   # the same under an XLA flag

For each map size it times, on the CPU backend, a 3x3 stride-1 'SAME' convolution in NHWC/HWIO
(`lax.conv_general_dilated`), forward and forward+backward (gradients of a sum with respect to the input
and the kernel), and prints the median of --repeats calls in ms and in GFLOP/s. FLOPs are the dense
count, 2 * N * H * W * 9 * Cin * Cout per forward and 3x that for forward+backward, taps that read only
padding included (8 of 9 at 1x1, 5 of 9 at 2x2), the same count for every column, so compare by ratio.
For contrast it also times the same forward and forward+backward as one matmul over explicitly built
patches (im2col), which computes the identical result: the convolution's per-FLOP rate falls off a cliff at 2x2 while the matmul's does not,
so the slowness is in the convolution's lowering, not in the arithmetic.
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

DIMS = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMS)


def conv_as_matmul(x, w):
  """The same 3x3 SAME convolution: zero-pad, gather the 9 shifted views, one (N*H*W, 9*Cin) @ (9*Cin, Cout)."""
  n, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for i in range(3) for j in range(3)], axis=-1)
  return (patches.reshape(n * h * wd, 9 * c) @ w.reshape(9 * c, -1)).reshape(n, h, wd, -1)


def fwd_bwd(f):
  return jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w)), argnums=(0, 1)))


def median_ms(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--channels", type=int, default=512, help="input and output channels")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--sizes", default="1,2,4,8", help="comma-separated map sides")
  parser.add_argument("--repeats", type=int, default=7, help="timed calls per figure (median shown)")
  args = parser.parse_args()
  jax.config.update("jax_platforms", "cpu")
  import os  # pylint: disable=g-import-not-at-top
  print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__ if hasattr(jax.lib, '__version__') else '?'}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"3x3 stride-1 SAME conv, NHWC/HWIO float32, batch {args.batch}, {args.channels} -> {args.channels} "
        f"channels; median of {args.repeats}")
  print(f"{'map':>5} {'GFLOP':>7} | {'conv fwd ms':>11} {'GFLOP/s':>8} | {'conv f+b ms':>11} {'GFLOP/s':>8} | "
        f"{'matmul fwd ms':>13} {'GFLOP/s':>8} | {'matmul f+b ms':>13} {'GFLOP/s':>8}")
  rng = np.random.default_rng(0)
  c, n = args.channels, args.batch
  w = jnp.asarray(rng.standard_normal((3, 3, c, c), np.float32) / np.sqrt(9 * c))
  for s in (int(v) for v in args.sizes.split(",")):
    x = jnp.asarray(rng.standard_normal((n, s, s, c), np.float32))
    gflop = 2 * n * s * s * 9 * c * c / 1e9
    fwd_ms = median_ms(jax.jit(conv), (x, w), args.repeats)
    fb_ms = median_ms(fwd_bwd(conv), (x, w), args.repeats)
    mm_ms = median_ms(jax.jit(conv_as_matmul), (x, w), args.repeats)
    mm_fb_ms = median_ms(fwd_bwd(conv_as_matmul), (x, w), args.repeats)
    print(f"{s}x{s:<3} {gflop:7.2f} | {fwd_ms:11.1f} {gflop / fwd_ms * 1e3:8.1f} | {fb_ms:11.1f} "
          f"{3 * gflop / fb_ms * 1e3:8.1f} | {mm_ms:13.1f} {gflop / mm_ms * 1e3:8.1f} | {mm_fb_ms:13.1f} "
          f"{3 * gflop / mm_fb_ms * 1e3:8.1f}")
  np.testing.assert_allclose(conv(x, w), conv_as_matmul(x, w), rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
  main()

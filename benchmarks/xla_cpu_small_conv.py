"""XLA:CPU runs 3x3 convolutions over tiny feature maps (1x1, 2x2) far slower per FLOP than over 4x4.

A standalone reproduction (needs only jax and numpy), ready to attach to an upstream report:

  python benchmarks/xla_cpu_small_conv.py                      # 512 channels, batch 64, maps 1, 2, 4, 8
  python benchmarks/xla_cpu_small_conv.py --channels=256 --sizes=1,2,4
  XLA_FLAGS=--some_flag python benchmarks/xla_cpu_small_conv.py   # the same under an XLA flag
  python benchmarks/xla_cpu_small_conv.py --skinny_dot --channels=64 --sizes=32   # one-thread kernel-grad dots

--kernel_grad, --pool and --skinny_dot (one at a time) time the other slow spots found on ResNet-18 at 64 and
128 px; see each flag's --help.

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


def kernel_grad_xla(x, w, g):
  """XLA's kernel gradient of the 3x3 SAME convolution for output cotangent g."""
  return jax.vjp(lambda k: conv(x, k), w)[1](g)[0]


def kernel_grad_taps(x, w, g):
  """The same kernel gradient as one (Cin x N*H*W) @ (N*H*W x Cout) matmul per kernel tap."""
  n, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = (((0,), (0,)), ((), ()))
  taps = [lax.dot_general(xp[:, i:i + h, j:j + wd, :].reshape(-1, c), g.reshape(-1, w.shape[-1]), rows)
          for i in range(3) for j in range(3)]
  return jnp.stack(taps).reshape(w.shape)


def kernel_grad_patches(x, w, g):
  """The same kernel gradient as one (Cout x N*H*W) @ (N*H*W x 9*Cin) matmul over the patches, built as a sum
  of zero-padded slices (XLA:CPU writes that faster than a concatenate of the same slices)."""
  n, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  views = [xp[:, i:i + h, j:j + wd, :].reshape(-1, c) for i in range(3) for j in range(3)]
  patches = sum(jnp.pad(v, ((0, 0), (k * c, (8 - k) * c))) for k, v in enumerate(views))
  rows = (((0,), (0,)), ((), ()))
  out = lax.dot_general(g.reshape(-1, w.shape[-1]), patches, rows)  # (Cout, 9 * Cin)
  return out.T.reshape(w.shape)


def max_pool_xla(x):
  """The 3x3/2 max-pool of a ResNet stem (padding 1): reduce_window, whose gradient is select-and-scatter."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def max_pool_slices(x):
  """The same pool as a maximum over the window's 9 strided slices (its gradient: selects and pads)."""
  n, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  ho, wo = (h - 1) // 2 + 1, (wd - 1) // 2 + 1
  views = [lax.slice(xp, (0, i, j, 0), (n, i + 2 * (ho - 1) + 1, j + 2 * (wo - 1) + 1, c), (1, 2, 2, 1))
           for i in range(3) for j in range(3)]
  out = views[0]
  for v in views[1:]:
    out = jnp.maximum(out, v)
  return out


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
  parser.add_argument("--kernel_grad", action="store_true",
                      help="time XLA's kernel gradient against one matmul per tap and one over the patches "
                           "instead (try --channels=64 --sizes=32 and --channels=128 --sizes=16: ResNet-18's "
                           "first stages at 128 px)")
  parser.add_argument("--pool", action="store_true",
                      help="time the 3x3/2 max-pool's forward+backward (reduce_window against strided slices) "
                           "over maps of --sizes (try --channels=64 --sizes=32,64)")
  parser.add_argument("--skinny_dot", action="store_true",
                      help="time the per-tap kernel-gradient matmul, (C x M) @ (M x C) with M = batch * size^2: "
                           "one, two and four independent ones in one jit, and one 9x wider (try --channels=64 "
                           "--sizes=32). Two taking twice one shows they run one after another, each on one "
                           "thread; compare `taskset -c 0` to see one thread is all a single one uses). One mode at "
                           "a time: --skinny_dot, --kernel_grad, --pool")
  args = parser.parse_args()
  jax.config.update("jax_platforms", "cpu")
  import os  # pylint: disable=g-import-not-at-top
  print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__ if hasattr(jax.lib, '__version__') else '?'}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if args.skinny_dot:
    return skinny_dots(args)
  if args.kernel_grad or args.pool:
    return compare_backward(args)
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


def skinny_dots(args):
  """--skinny_dot: the long-contraction, small-output matmuls of a kernel gradient over a large map."""
  rng = np.random.default_rng(0)
  c = args.channels
  contract_rows = (((0,), (0,)), ((), ()))  # (M x C)^T @ (M x C), as in one tap's kernel gradient.
  print(f"(C x M) @ (M x C), float32, C = {c}; median of {args.repeats}")
  print(f"{'M':>9} | {'one ms':>8} {'GFLOP/s':>8} | {'two ms':>8} | {'four ms':>8} | {'9x wider ms':>11} "
        f"{'GFLOP/s':>8}")
  for s in (int(v) for v in args.sizes.split(",")):
    m = args.batch * s * s
    ops = [jnp.asarray(rng.standard_normal((m, c), np.float32)) for _ in range(8)]  # No operand shared.
    wide = jnp.asarray(rng.standard_normal((m, 9 * c), np.float32))
    dot = lambda p, q: lax.dot_general(p, q, contract_rows)
    dots = lambda *xs: tuple(dot(xs[i], xs[i + 1]) for i in range(0, len(xs), 2))
    one = median_ms(jax.jit(dots), ops[:2], args.repeats)
    two = median_ms(jax.jit(dots), ops[:4], args.repeats)
    four = median_ms(jax.jit(dots), ops, args.repeats)
    wide_ms = median_ms(jax.jit(lambda p, q: dot(q, p)), (wide, ops[0]), args.repeats)
    gflop = 2 * m * c * c / 1e9
    print(f"{m:9d} | {one:8.1f} {gflop / one * 1e3:8.1f} | {two:8.1f} | {four:8.1f} | {wide_ms:11.1f} "
          f"{9 * gflop / wide_ms * 1e3:8.1f}")


def compare_backward(args):
  """--kernel_grad / --pool: XLA's backward against the rewritten one, median of --repeats, A and B alternating."""
  rng = np.random.default_rng(0)
  c, n = args.channels, args.batch
  what = "3x3 SAME conv kernel gradient" if args.kernel_grad else "3x3/2 max-pool forward+backward"
  print(f"{what}, NHWC float32, batch {n}, {c} channels; median of {args.repeats} rounds")
  if args.kernel_grad:
    print(f"{'map':>5} | {'XLA ms':>9} | {'per-tap ms':>10} | {'patches ms':>10} | XLA/per-tap | XLA/patches")
  else:
    print(f"{'map':>5} | {'XLA ms':>9} | {'rewritten ms':>12} | ratio")
  for s in (int(v) for v in args.sizes.split(",")):
    x = jnp.asarray(rng.standard_normal((n, s, s, c), np.float32))
    if args.kernel_grad:
      w = jnp.asarray(rng.standard_normal((3, 3, c, c), np.float32) / np.sqrt(9 * c))
      g = jnp.asarray(rng.standard_normal((n, s, s, c), np.float32))
      fns = tuple(jax.jit(f) for f in (kernel_grad_xla, kernel_grad_taps, kernel_grad_patches))
      fn_args = (x, w, g)
      ref = np.asarray(fns[0](*fn_args))
      for fn in fns[1:]:
        assert np.max(np.abs(np.asarray(fn(*fn_args)) - ref)) <= 1e-5 * np.max(np.abs(ref)), "the rewrite differs"
    else:
      fns = tuple(jax.jit(lambda a, f=f: jax.vjp(f, a)[1](jnp.ones_like(f(a)))[0])
                  for f in (max_pool_xla, max_pool_slices))
      fn_args = (x,)
    times = tuple([] for _ in fns)
    for _ in range(args.repeats):  # Alternate, so that a noisy neighbour hits all of them.
      for k, fn in enumerate(fns):
        times[k].append(median_ms(fn, fn_args, 1))
    ms = [statistics.median(t) for t in times]
    if args.kernel_grad:
      print(f"{s}x{s:<3} | {ms[0]:9.1f} | {ms[1]:10.1f} | {ms[2]:10.1f} | {ms[0] / ms[1]:10.2f}x | "
            f"{ms[0] / ms[2]:10.2f}x")
    else:
      print(f"{s}x{s:<3} | {ms[0]:9.1f} | {ms[1]:12.1f} | {ms[0] / ms[1]:.2f}x")


if __name__ == "__main__":
  main()

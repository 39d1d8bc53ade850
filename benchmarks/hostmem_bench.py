"""A train-mode forward+backward of a jaxcxr model on CPU with and without transparent huge pages.

  python benchmarks/hostmem_bench.py --model=resnet18 --size=128 --rounds=5

Each round runs one child process per setting, alternating (so a noisy neighbour hits both): the default
malloc, and GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (what `jaxcxr.hostmem` gives jaxcxr's commands). Each
child compiles `jax.grad` of the model's train-mode loss at --batch x --size x --size x 1, runs --warmup
calls, then times --steps calls and counts the minor page faults each one takes. It prints the median
step time, faults per step and the largest peak RSS of every setting, and the ratio. The children are
plain `python -c` processes given exactly one GLIBC_TUNABLES value each (none, or the tunable), so
nothing else decides.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {"default malloc": "", "glibc.malloc.hugetlb=1": "glibc.malloc.hugetlb=1"}

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
from jaxcxr import models
model_name, batch, size, warmup, steps = sys.argv[1], *map(int, sys.argv[2:6])
x = jax.random.normal(jax.random.key(0), (batch, size, size, 1))
model = models.get_model(model_name, num_classes=14)
variables = model.init(jax.random.key(0), x, train=False)

def loss(params, batch_stats, x):
  (logits, _), _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"])
  return jnp.mean(logits ** 2)

grad = jax.jit(jax.grad(loss))
args = (variables["params"], variables["batch_stats"], x)
for _ in range(warmup):
  jax.block_until_ready(grad(*args))
times, faults = [], []
for _ in range(steps):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  start = time.perf_counter()
  jax.block_until_ready(grad(*args))
  times.append(time.perf_counter() - start)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"times": times, "faults": faults,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(args, tunables):
  env = dict(os.environ, JAXCXR_HUGE_PAGES="0")
  env.pop("GLIBC_TUNABLES", None)
  if tunables:
    env["GLIBC_TUNABLES"] = tunables
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  proc = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.size),
                         str(args.warmup), str(args.steps)], env=env, capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    sys.exit(f"child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--size", type=int, default=128, help="image side in pixels")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5, help="child processes per setting, alternating")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=4, help="timed calls per child")
  args = parser.parse_args()
  print(f"{args.model}, {args.size} px, batch {args.batch}, train-mode forward+backward on CPU; "
        f"{args.rounds} rounds x {args.steps} steps per setting", flush=True)
  results = {name: {"times": [], "faults": [], "max_rss_mb": []} for name in SETTINGS}
  for r in range(args.rounds):
    for name, tunables in SETTINGS.items():
      out = run_child(args, tunables)
      for key in ("times", "faults"):
        results[name][key] += out[key]
      results[name]["max_rss_mb"].append(out["max_rss_mb"])
      print(f"  round {r + 1}: {name:<24} median {statistics.median(out['times']):.3f} s", flush=True)
  base = statistics.median(results["default malloc"]["times"])
  print(f"{'setting':<24} | {'step s (median)':>15} | {'vs default':>10} | {'page faults/step':>16} | "
        f"{'peak RSS MB':>11}")
  for name, res in results.items():
    t = statistics.median(res["times"])
    print(f"{name:<24} | {t:15.3f} | {t / base:9.3f}x | {statistics.median(res['faults']):16,.0f} | "
          f"{max(res['max_rss_mb']):11,.0f}")


if __name__ == "__main__":
  main()

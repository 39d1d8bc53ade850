"""Measures training speed: the step alone, the loader alone, both together, compile time, and a peer.

  python -m jaxcxr.bench --config=configs/demo.py
  python -m jaxcxr.bench --config=configs/bench_resnet50.py --json_out=/tmp/bench.json --peer=torchvision
  python -m jaxcxr.bench --config=configs/demo.py --config.train.batch_size=128 --parts=step,e2e --steps=30

Everything runs with the config's model, image size, global batch (sharded over every device, like the
trainer) and compute dtype (`model.dtype`; 'auto' = bfloat16 on GPU/TPU, float32 on CPU; parameters fp32).
Parts (--parts, comma-separated):
  compile  time to trace, lower and compile the train step, cold (empty persistent cache) and warm
           (a second process reading the persistent compilation cache the first one wrote);
  step     images/s of the jitted train step alone on synthetic uint8 batches already on the device,
           with no host sync inside a timed window (median over --windows windows of --steps steps);
  loader   images/s of the Grain training loader alone (the config's prepared data if present, else a
           synthetic in-memory split of the same image size, which the table says);
  e2e      loader + host->device transfer + step, one batch prefetched to the device, as the trainer runs.
  peer     (with --peer=torchvision, when PyTorch and torchvision are installed) torchvision's model of the same
           name in PyTorch on the same kind of device, batch, resolution, one input channel and precision
           (CUDA: bf16 autocast + channels_last; CPU: float32), BCE-with-logits and AdamW; ratio jaxcxr/torch.
           Eager, and (--peer_compile) again with the model under `torch.compile` (Inductor), whose row says
           why when it fails or runs past --peer_timeout. Each runs in its own child process.
Subprocess parts (compile, peer) run before this process touches the accelerator, so each gets the whole
device memory. Results print as a table and go to --json_out (default: a new file under the temp folder,
whose path is printed).
"""

from jaxcxr import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages(__spec__, __file__)  # First: glibc reads its tunables only at start.

# pylint: disable=g-import-not-at-top,wrong-import-position

import importlib.util
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags
from ml_collections import config_flags
import numpy as np

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr.data import nih

PARTS = ("compile", "step", "loader", "e2e")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an arm (configs/demo.py:focal); override fields with "
    "--config.FIELD=VALUE, e.g. --config.train.batch_size=256.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Steps (or loader batches) per timed window.")
flags.DEFINE_integer("warmup", 3, "Untimed steps (or batches) before the first window, after compiling.")
flags.DEFINE_integer("windows", 5, "Timed windows per part; the table shows the median window.")
flags.DEFINE_string("json_out", "", "Where to write the JSON results (default: a new temp file; the path is "
                    "printed).")
flags.DEFINE_enum("peer", "torchvision", ["torchvision", "none"], "Also time torchvision's model in PyTorch "
                  "(skipped with a message when torch/torchvision are not installed).")
flags.DEFINE_bool("peer_compile", True, "Also time the PyTorch peer with its model under torch.compile.")
flags.DEFINE_integer("peer_timeout", 1800, "Seconds each PyTorch peer child may run (compiling included).")
flags.DEFINE_list("parts", list(PARTS), f"Which of {', '.join(PARTS)} to run.")
flags.DEFINE_enum("data", "auto", ["auto", "synthetic"], "Loader data: 'auto' uses the config's prepared data "
                  "when present, else a synthetic in-memory split; 'synthetic' always the latter.")
flags.DEFINE_integer("synthetic_images", 4096, "Images in the synthetic in-memory split.")
flags.mark_flags_as_required(["config"])


# ---------------------------------------------------------------------------------------------------
# Timing helpers.
# ---------------------------------------------------------------------------------------------------


def timed_windows(run_window, *, windows):
  """Calls `run_window()` (which must return only when its work is done) `windows` times; seconds each."""
  out = []
  for _ in range(windows):
    t0 = time.perf_counter()
    run_window()
    out.append(time.perf_counter() - t0)
  return out


def summarize(seconds, *, batch, steps):
  """images/s and ms/step of the median window, plus every window's images/s."""
  med = statistics.median(seconds)
  return {"images_per_s": batch * steps / med, "ms_per_step": 1e3 * med / steps,
          "window_images_per_s": [batch * steps / s for s in seconds], "steps_per_window": steps}


# ---------------------------------------------------------------------------------------------------
# The jaxcxr pieces: model, state and step as the trainer builds them.
# ---------------------------------------------------------------------------------------------------


def _fake_counts(config):
  """Per-class positive counts for losses and the head bias: speed does not depend on their values."""
  del config
  num_total = 10_000
  return np.full(len(nih.CLASSES), 200, np.int64), num_total


def build(config):
  """(mesh, data sharding, jitted train step, initial state) of the trainer, without data (the loss weights
  and the head's prior bias come from made-up counts: speed does not depend on their values)."""
  from jaxcxr import train  # pylint: disable=g-import-not-at-top
  num_pos, num_total = _fake_counts(config)
  trainer = train.Trainer(config, num_pos=num_pos, num_total=num_total)
  return trainer.mesh, trainer.ctx.data_sharding, trainer.train_step, trainer.state


def synthetic_local_batch(config, rng):
  """This process's share of a global batch of random uint8 images and 0/1 labels (numpy)."""
  import jax  # pylint: disable=g-import-not-at-top
  b, s = config.train.batch_size // jax.process_count(), config.data.image_size
  return {"image": rng.integers(0, 256, (b, s, s, 1), dtype=np.uint8),
          "labels": (rng.random((b, len(nih.CLASSES))) < 0.05).astype(np.float32)}


def to_global(sharding, local):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


# ---------------------------------------------------------------------------------------------------
# Parts.
# ---------------------------------------------------------------------------------------------------


def bench_step(config, built, *, steps, warmup, windows):
  """The jitted step alone on one synthetic batch already on the device; blocks only per window."""
  import jax  # pylint: disable=g-import-not-at-top
  _, sharding, train_step, _ = built
  batch = to_global(sharding, synthetic_local_batch(config, np.random.default_rng(0)))
  holder = {"state": built[3]}

  def run(n):
    state = holder["state"]
    for _ in range(n):
      state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    holder["state"] = state

  t0 = time.perf_counter()
  run(1)  # Compiles (or reads the persistent cache), then runs one step.
  first = time.perf_counter() - t0
  run(warmup)
  res = summarize(timed_windows(lambda: run(steps), windows=windows), batch=config.train.batch_size,
                  steps=steps)
  res["first_step_s"] = first
  return res, holder["state"]


def synthetic_split(config, num_images):
  """An in-memory 'train' split of random uint8 images at the config's size (loader timing only)."""
  from jaxcxr.data import split as split_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  s = config.data.image_size
  images = rng.integers(0, 256, (num_images, s, s), dtype=np.uint8)
  labels = (rng.random((num_images, len(nih.CLASSES))) < 0.05).astype(np.uint8)
  meta = nih.Metadata(names=np.asarray([f"synthetic_{i:06d}.png" for i in range(num_images)]),
                      patients=np.arange(num_images, dtype=np.int64), labels=labels)
  return split_lib.Split("train", meta, images, np.arange(num_images, dtype=np.int64))


def _prepared_dir(config):
  """The folder of the config's prepared images if it holds a complete array, else None."""
  from jaxcxr.data import datasets  # pylint: disable=g-import-not-at-top
  d = os.path.join(datasets.data_dir(config), datasets.PREPARED)
  if os.path.isdir(d) and any(f.startswith(f"{config.data.image_size}px-")
                              and os.path.exists(os.path.join(d, f, datasets.INDEX)) for f in os.listdir(d)):
    return d
  return None


def train_split(config, *, data, synthetic_images):
  """(split, description): the config's prepared training split, or a synthetic one when absent."""
  from jaxcxr.data import datasets  # pylint: disable=g-import-not-at-top
  if data == "auto" and _prepared_dir(config):
    try:
      split = datasets.load_splits(config)["train"]
      return split, f"prepared {config.data.source} data, {len(split)} train images"
    except nih.DataError as e:
      print(f"bench: the prepared data could not be read ({e}); using synthetic data.", file=sys.stderr)
  why = "requested" if data == "synthetic" else f"no prepared data under {datasets.data_dir(config)}"
  return synthetic_split(config, synthetic_images), f"SYNTHETIC in-memory split of {synthetic_images} ({why})"


def make_iterator(config, split):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.train_iterator(split, global_batch=config.train.batch_size, seed=config.seed,
                                 process_index=jax.process_index(), process_count=jax.process_count(),
                                 num_workers=config.data.num_workers)


def bench_loader(config, split, *, steps, warmup, windows):
  """The Grain training iterator alone: batches of numpy arrays on the host."""
  it = make_iterator(config, split)

  def run(n):
    for _ in range(n):
      next(it)

  import jax  # pylint: disable=g-import-not-at-top
  local = config.train.batch_size // jax.process_count()
  # Grain's iterator reads ahead (ReadOptions.prefetch_buffer_size images on threads): fill that buffer
  # in the warm-up and time windows several buffers long, so that they measure the steady rate.
  buffer = grain_prefetch_buffer()
  run(max(warmup, -(-buffer // local), 1))
  steps = max(steps, -(-4 * buffer // local))
  return summarize(timed_windows(lambda: run(steps), windows=windows), batch=local * jax.process_count(),
                   steps=steps)


def grain_prefetch_buffer():
  """Images Grain's iterator reads ahead by default."""
  import grain  # pylint: disable=g-import-not-at-top
  return int(grain.ReadOptions().prefetch_buffer_size)


def bench_e2e(config, built, state, split, *, steps, warmup, windows):
  """Loader -> device -> step as the trainer runs it: batch k+1 is put on the device while step k runs."""
  import jax  # pylint: disable=g-import-not-at-top
  _, sharding, train_step, _ = built
  it = make_iterator(config, split)
  holder = {"state": state, "batch": to_global(sharding, next(it))}

  def run(n):
    state, batch = holder["state"], holder["batch"]
    for _ in range(n):
      state, metrics = train_step(state, batch)
      batch = to_global(sharding, next(it))  # Built and sent while the step runs on the device.
    jax.block_until_ready((state, metrics))
    holder["state"], holder["batch"] = state, batch

  run(max(warmup, 1))
  return summarize(timed_windows(lambda: run(steps), windows=windows), batch=config.train.batch_size,
                   steps=steps)


# ---------------------------------------------------------------------------------------------------
# Subprocess parts: compile time and the PyTorch peer.
# ---------------------------------------------------------------------------------------------------


def _repo_env():
  """The environment for a child process that must import this same jaxcxr."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  return env


def _run_child(code, *args, timeout_s=1800):
  """Runs `python -c code args...`; returns the JSON object the child prints on its last stdout line."""
  try:
    proc = subprocess.run([sys.executable, "-c", code, *args], env=_repo_env(), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired as e:
    raise RuntimeError(f"bench child process ran past {timeout_s} s and was stopped.") from e
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    raise RuntimeError(f"bench child process failed (exit {proc.returncode}):\n{tail}")
  return json.loads(lines[-1])


def compile_probe(config_path, cache_dir):
  """Child process: times trace + lower and compile of the train step with the persistent cache at
  `cache_dir`, and prints one JSON line."""
  with open(config_path, "rb") as f:
    config = pickle.load(f)
  cli.enable_compilation_cache(cache_dir, min_compile_time_secs=0.0)
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  _, sharding, train_step, state = build(config)
  jax.block_until_ready(state)
  t1 = time.perf_counter()
  batch = to_global(sharding, synthetic_local_batch(config, np.random.default_rng(0)))
  t2 = time.perf_counter()
  lowered = train_step.lower(state, batch)
  t3 = time.perf_counter()
  lowered.compile()
  t4 = time.perf_counter()
  print(json.dumps({"init_s": t1 - t0, "trace_lower_s": t3 - t2, "compile_s": t4 - t3,
                    "cache_files": len(os.listdir(cache_dir))}))


def bench_compile(config, cache_dir):
  """Cold (empty cache) then warm (a new process reading the cache the cold one wrote)."""
  with tempfile.NamedTemporaryFile("wb", suffix=".pkl", delete=False) as f:
    pickle.dump(config, f)
  code = "import sys; from jaxcxr import bench; bench.compile_probe(sys.argv[1], sys.argv[2])"
  try:
    cold = _run_child(code, f.name, cache_dir)
    warm = _run_child(code, f.name, cache_dir)
  finally:
    os.remove(f.name)
  return {"cold": cold, "warm": warm, "cache_dir": cache_dir}


# jaxcxr models with a same-named torchvision model (one-channel stem swapped in the child).
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169")

PEER_CODE = r"""
import json, statistics, sys, time
import torch, torchvision
name, batch, size, steps, warmup, windows, want, mode = sys.argv[1:9]
batch, size, steps, warmup, windows = map(int, (batch, size, steps, warmup, windows))
cuda = want == "cuda" and torch.cuda.is_available()
dev = torch.device("cuda" if cuda else "cpu")
torch.backends.cudnn.benchmark = True  # Fixed shapes: let cuDNN pick its fastest kernels, as AMP recipes do.
model = getattr(torchvision.models, name)(num_classes=14)
old = model.conv1 if hasattr(model, "conv1") else model.features.conv0
new = torch.nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
if hasattr(model, "conv1"):
  model.conv1 = new
else:
  model.features.conv0 = new
fmt = torch.channels_last if cuda else torch.contiguous_format
model = model.to(dev, memory_format=fmt).train()
if mode == "compile":
  model = torch.compile(model)  # Inductor; forward and backward compile on the first step.
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, **({"fused": True} if cuda else {}))
loss_fn = torch.nn.BCEWithLogitsLoss()
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=g).to(dev)
images = images.contiguous(memory_format=fmt)
labels = (torch.rand(batch, 14, generator=g) < 0.05).float().to(dev)
def step():
  x = (images.float() / 255.0 - 0.5) / 0.25
  with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
    loss = loss_fn(model(x).float(), labels)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss
def sync():
  if cuda:
    torch.cuda.synchronize()
t0 = time.perf_counter()
step()
sync()
first = time.perf_counter() - t0
for _ in range(max(warmup - 1, 0)):
  step()
sync()
secs = []
for _ in range(windows):
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  sync()
  secs.append(time.perf_counter() - t0)
med = statistics.median(secs)
print(json.dumps({"images_per_s": batch * steps / med, "ms_per_step": 1e3 * med / steps,
                  "window_images_per_s": [batch * steps / s for s in secs], "steps_per_window": steps,
                  "device": torch.cuda.get_device_name() if cuda else "cpu",
                  "precision": "bf16 autocast, channels_last, fused AdamW" if cuda else "float32",
                  "torch": torch.__version__, "torchvision": torchvision.__version__,
                  "threads": torch.get_num_threads(), "final_loss": loss.item(), "mode": mode,
                  "first_step_s": first}))
"""


def bench_peer(config, *, steps, warmup, windows, mode="eager", timeout_s=1800):
  """torchvision's model of config.model.name in PyTorch, or a dict with 'skipped' saying why.

  mode: 'eager', or 'compile' (the model under torch.compile; its failure is a 'skipped' with the reason).
  """
  name = config.model.name
  # Not imported here: PyTorch's CUDA libraries loaded into this process could clash with JAX's.
  missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
  if missing:
    return {"skipped": f"{' and '.join(missing)} not installed; `pip install -e .[bench]` adds them."}
  if name not in TORCHVISION_MODELS:
    return {"skipped": f"no torchvision counterpart of model.name={name!r} (have {', '.join(TORCHVISION_MODELS)})."}
  platforms = os.environ.get("JAX_PLATFORMS", "")
  want = "cpu" if platforms and not any(p in platforms for p in ("cuda", "gpu")) else "cuda"
  args = (name, str(config.train.batch_size), str(config.data.image_size), str(steps), str(warmup),
          str(windows), want, mode)
  if mode == "eager":
    return _run_child(PEER_CODE, *args, timeout_s=timeout_s)
  try:
    return _run_child(PEER_CODE, *args, timeout_s=timeout_s)
  except RuntimeError as e:  # torch.compile is optional: say why it did not run, keep the other rows.
    return {"skipped": f"torch.compile did not run: {str(e).strip().splitlines()[-1][:300]}"}


PEER_ROWS = {"eager": "peer_torchvision", "compile": "peer_torch_compile"}


def peer_notes(peer_results, *, config, step):
  """Adds each peer row's note and, with the `step` result, jaxcxr's images/s over the peer's."""
  for mode, r in peer_results.items():
    if "skipped" in r:
      continue
    note = (f"torch {r['torch']} on {r['device']}, {r['precision']}, batch {config.train.batch_size}, "
            f"{config.data.image_size} px, {'torch.compile' if mode == 'compile' else 'eager'}")
    if mode == "compile":
      note += f" (first step {r['first_step_s']:.0f} s)"
    if step is not None:
      r["jaxcxr_over_torch"] = step["images_per_s"] / r["images_per_s"]
      note += f"; jaxcxr step / torch = {r['jaxcxr_over_torch']:.2f}x"
    r["notes"] = note


# ---------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------


def format_table(results):
  """A fixed-width table: part, images/s, ms/step, notes."""
  rows = [("part", "images/s", "ms/step", "notes")]
  for part, r in results["parts"].items():
    if "skipped" in r:
      rows.append((part, "-", "-", "skipped: " + r["skipped"]))
    elif part == "compile":
      c, w = r["cold"], r["warm"]
      rows.append(("compile", "-", "-", f"cold: trace+lower {c['trace_lower_s']:.1f} s + compile "
                   f"{c['compile_s']:.1f} s; warm persistent cache: {w['trace_lower_s']:.1f} s + "
                   f"{w['compile_s']:.1f} s"))
    else:
      rows.append((part, f"{r['images_per_s']:,.0f}", f"{r['ms_per_step']:.1f}", r.get("notes", "")))
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
  lines.insert(1, "-" * max(len(l) for l in lines))
  return "\n".join(lines)


def run_bench(config, *, parts, steps, warmup, windows, peer, data, synthetic_images, peer_compile=False,
              peer_timeout=1800):
  """Runs the parts and returns the results dict (see the module docstring)."""
  unknown = set(parts) - set(PARTS)
  if unknown:
    raise ValueError(f"Unknown --parts {sorted(unknown)}; choose from {', '.join(PARTS)}.")
  results = {"config": {"model": config.model.name, "image_size": config.data.image_size,
                        "global_batch": config.train.batch_size, "model_dtype": config.model.dtype,
                        "loss": config.loss.name, "num_workers": config.data.num_workers,
                        "arm": config.get("arm", ""), "augment": bool(config.data.augment.enabled)},
             "timing": {"steps": steps, "warmup": warmup, "windows": windows}, "parts": {}}
  out = results["parts"]
  # Children first, while this process has not claimed the accelerator's memory.
  cache_dir = None
  if "compile" in parts:
    cache_dir = tempfile.mkdtemp(prefix="jaxcxr_bench_xla_")
    print(f"bench: compiling the train step cold and warm in two processes (cache {cache_dir}) ...", flush=True)
    out["compile"] = bench_compile(config, cache_dir)
  peer_results = {}
  if peer != "none":
    for mode in ("eager", "compile") if peer_compile else ("eager",):
      print(f"bench: timing the PyTorch peer ({mode}) in a child process ...", flush=True)
      peer_results[mode] = bench_peer(config, steps=steps, warmup=warmup, windows=windows, mode=mode,
                                      timeout_s=peer_timeout)
      if mode == "eager" and "skipped" in peer_results[mode]:
        break  # No torch: no compiled peer either.
  # The step reuses the warm cache the compile part wrote (the same program), else the config's cache.
  cli.enable_compilation_cache(cache_dir or config.train.compilation_cache)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxcxr import model_context  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  dtype = np.dtype(model_context.compute_dtype(config.model.dtype)).name
  results["device"] = {"kind": dev.device_kind, "platform": dev.platform, "count": jax.device_count(),
                       "processes": jax.process_count(), "host": platform.node(),
                       "cpu": platform.processor() or platform.machine(), "host_cpus": os.cpu_count(),
                       "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                       # The PyTorch peer's child inherits these too (jaxcxr.hostmem): both run alike.
                       "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "thp": hostmem.thp_mode()}
  results["config"]["compute_dtype"] = dtype
  common = (f"{jax.device_count()} x {dev.device_kind}, {dtype}, batch {config.train.batch_size}, "
            f"{config.data.image_size} px, {config.model.name}")
  need_model = {"step", "e2e"} & set(parts)
  built = state = None
  if need_model:
    print(f"bench: building {config.model.name} on {common} ...", flush=True)
    built = build(config)
    state = built[3]
  if "step" in parts:
    out["step"], state = bench_step(config, built, steps=steps, warmup=warmup, windows=windows)
    # The PyTorch peer never augments: say whether this step does (on-device augmentation costs a few percent).
    augment = "augmentation on" if results["config"]["augment"] else "no augmentation"
    out["step"]["notes"] = (f"{common}; synthetic batch on device; {augment}; first step "
                            f"{out['step']['first_step_s']:.1f} s")
  split = None
  if {"loader", "e2e"} & set(parts):
    split, data_note = train_split(config, data=data, synthetic_images=synthetic_images)
    results["loader_data"] = data_note
  if "loader" in parts:
    out["loader"] = bench_loader(config, split, steps=steps, warmup=warmup, windows=windows)
    out["loader"]["notes"] = f"Grain, {config.data.num_workers} worker(s), {data_note}"
  if "e2e" in parts:
    out["e2e"] = bench_e2e(config, built, state, split, steps=steps, warmup=warmup, windows=windows)
    note = f"{common}; loader + transfer + step, 1 batch prefetched"
    if "step" in out:
      note += f"; {100 * out['e2e']['images_per_s'] / out['step']['images_per_s']:.0f}% of step"
    out["e2e"]["notes"] = note
  peer_notes(peer_results, config=config, step=out.get("step"))
  for mode, r in peer_results.items():
    out[PEER_ROWS[mode]] = r
  return results


def main(argv):
  cli.start(argv)
  config = FLAGS.config
  config_check.check(config)
  with cli.user_errors("jaxcxr.bench", nih.DataError, ValueError, RuntimeError):
    results = run_bench(config, parts=[p.strip() for p in FLAGS.parts if p.strip()], steps=FLAGS.steps,
                        warmup=FLAGS.warmup, windows=FLAGS.windows, peer=FLAGS.peer, data=FLAGS.data,
                        synthetic_images=FLAGS.synthetic_images, peer_compile=FLAGS.peer_compile,
                        peer_timeout=FLAGS.peer_timeout)
  d = results["device"]
  print(f"\njaxcxr.bench: {d['count']} x {d['kind']} ({d['platform']}), JAX {d['jax']}, "
        f"compute {results['config']['compute_dtype']}, host {d['host_cpus']} CPUs, "
        f"GLIBC_TUNABLES={d['glibc_tunables'] or '(unset)'}, THP {d['thp'] or 'unknown'}"
        + (f"; loader data: {results['loader_data']}" if "loader_data" in results else ""))
  print(format_table(results))
  path = FLAGS.json_out
  if not path:
    fd, path = tempfile.mkstemp(prefix="jaxcxr_bench_", suffix=".json")
    os.close(fd)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
  print(f"\nJSON: {path}")


if __name__ == "__main__":
  cli.run(main, "jaxcxr.bench")

"""Preparation and loader throughput: images/s per core, medians of several runs, side by side.

  python benchmarks/prepare_bench.py                       # 2048 PNGs of 1024x1024, prepared to 256 px
  python benchmarks/prepare_bench.py --num_images=256 --repeats=2 --dir=/tmp/jaxcxr_bench   # quicker

Writes NIH-layout data (a label file, the two split lists and 1024x1024 8-bit PNGs with X-ray-like
smooth structure and noise, so they compress like real ones) into --dir, then measures:
  prepare   decoding + resizing PNGs to --size px uint8 (datasets.prepare), one process: images/s per core;
            and with all cores; for reference, one process with PIL decoding every PNG (no libpng).
  loader    the Grain training pipeline (pipeline.train_iterator, batches of --batch, no workers, no model)
            reading the prepared uint8 images: from the memory-mapped array training uses, and, for
            reference, from the TFDS ArrayRecord export through tfds data sources (tfds_builder.Images;
            each record is zstd-compressed and parsed by TFDS in Python, ~0.5 ms an image).
Goals (issue #3): prepare >= 100 images/s per core, loader >= 5000 images/s per core at 256 px.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcxr.data import datasets  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxcxr.data import nih  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxcxr.data import split as split_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
# Nothing heavier at the top: preparation workers are spawned and import this module again (Grain, imported
# in time_loader, costs 1.5 s per worker; `python -m jaxcxr.prepare`'s workers import 0.3 s worth).


def write_data(directory, *, num_images, size=1024, seed=0, unique=64):
  """NIH-layout data with `num_images` grey PNGs of `size` px, `unique` distinct ones (reused if there)."""
  names = [f"{i:08d}_000.png" for i in range(num_images)]
  images = os.path.join(directory, "images")
  os.makedirs(images, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i, name in enumerate(names):
    path = os.path.join(images, name)
    if os.path.exists(path):
      continue
    if i >= unique:  # Copies decode exactly as slowly as originals, and are written in no time.
      shutil.copyfile(os.path.join(images, names[i % unique]), path)
      continue
    coarse = Image.fromarray(rng.integers(40, 220, (12, 12), dtype=np.uint8)).resize((size, size),
                                                                                     Image.Resampling.BICUBIC)
    a = np.asarray(coarse, np.float32) + rng.normal(0, 1.5, (size, size))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path + ".tmp", format="png")
    os.replace(path + ".tmp", path)  # A killed run leaves no half-written PNG behind.
    if i % 16 == 0:
      print(f"  wrote {i}/{unique} distinct PNGs", flush=True)
  labels = ["Hernia" if i % 50 == 0 else "No Finding" for i in range(num_images)]
  with open(os.path.join(directory, nih.LABEL_FILE), "w") as f:
    f.write("Image Index,Finding Labels,Patient ID\n")
    f.writelines(f"{n},{y},{i}\n" for i, (n, y) in enumerate(zip(names, labels)))
  cut = num_images * 4 // 5
  for list_name, part in ((nih.TRAIN_VAL_LIST, names[:cut]), (nih.TEST_LIST, names[cut:])):
    with open(os.path.join(directory, list_name), "w") as f:
      f.writelines(n + "\n" for n in part)
  return nih.read_labels(os.path.join(directory, nih.LABEL_FILE))


def _cpu_seconds():
  """CPU time of this process and of its finished children (the preparation workers), user + system."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def time_prepare(directory, meta, *, size, workers, libpng=True):
  """(images per wall second, images per CPU second of this process and its workers, startup included).

  libpng=False (one process only) turns off the libpng shortcut for 8-bit grey PNGs: PIL decodes all.
  """
  shutil.rmtree(os.path.join(directory, datasets.PREPARED), ignore_errors=True)
  shortcut = datasets._decode_grey8_png  # pylint: disable=protected-access
  if not libpng:
    assert workers == 1, "the switch only reaches this process"
    datasets._decode_grey8_png = lambda data: None  # pylint: disable=protected-access
  try:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    prepared = datasets.prepare(directory, meta, size=size, num_workers=workers, progress=False)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
  finally:
    datasets._decode_grey8_png = shortcut  # pylint: disable=protected-access
  assert prepared.report["prepared"] == len(meta), prepared.report
  return len(meta) / wall, len(meta) / cpu


def time_loader(split, *, batch, num_batches):
  """(images per wall second, images per CPU second, all threads of this process)."""
  from jaxcxr.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.train_iterator(split, global_batch=batch, seed=0)
  next(it)  # Warm-up.
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    b = next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  assert b["image"].shape == (batch, *split.images.shape[1:], 1) and b["image"].dtype == np.uint8
  return num_batches * batch / wall, num_batches * batch / cpu


def time_raw(split, *, batch, num_batches):
  """The floor under any loader: random batches read straight from `split.images`, nothing else."""
  rng = np.random.default_rng(0)
  idx = [np.sort(split.rows[rng.choice(len(split), batch, replace=False)]) for _ in range(num_batches)]
  wall, cpu = time.perf_counter(), time.process_time()
  for i in idx:
    b = np.asarray(split.images[i])
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  assert b.shape == (batch, *split.images.shape[1:])
  return num_batches * batch / wall, num_batches * batch / cpu


def _median(runs):
  return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=2048,
                      help="PNGs to prepare (64 distinct, the rest copies: they decode as slowly).")
  parser.add_argument("--size", type=int, default=256, help="Prepared resolution.")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--loader_batches", type=int, default=300)
  parser.add_argument("--dir", default="", help="Data folder (kept); default: a temporary one, removed.")
  args = parser.parse_args()
  directory = args.dir or tempfile.mkdtemp(prefix="jaxcxr_bench_")
  cores = os.cpu_count()
  try:
    print(f"Writing {args.num_images} 1024x1024 PNGs to {directory} ...", flush=True)
    meta = write_data(directory, num_images=args.num_images)
    mb = np.mean([os.path.getsize(os.path.join(directory, "images", n)) for n in meta.names]) / 1e6
    rows = []  # (what, images per wall second, images per CPU second, goal per core, processes decoding)

    def record(name, runs, goal, processes=None):
      wall, cpu = _median(runs)
      rows.append((name, wall, cpu, goal, processes))
      print(f"  {name}: wall {[round(r[0]) for r in runs]}, CPU {[round(r[1]) for r in runs]} img/s", flush=True)

    # With and without the libpng shortcut, alternating, so that both see the same machine.
    runs = {True: [], False: []}
    for _ in range(args.repeats):
      for libpng in (True, False):
        runs[libpng].append(time_prepare(directory, meta, size=args.size, workers=1, libpng=libpng))
    record(f"prepare, 1 process ({args.size} px)", runs[True], 100, 1)
    record("  reference: the same, PIL decoding every PNG", runs[False], None, 1)
    if cores > 1:
      record(f"prepare, {cores} processes",
             [time_prepare(directory, meta, size=args.size, workers=cores) for _ in range(args.repeats)], 100,
             cores)

    prepared = datasets.prepare(directory, meta, size=args.size, progress=False)
    split = split_lib.Split("train", prepared.meta, prepared.images, prepared.rows)
    record(f"loader, memmap, batch {args.batch}",
           [time_loader(split, batch=args.batch, num_batches=args.loader_batches) for _ in range(args.repeats)], 5000)

    record(f"  reference: memmap fancy index, batch {args.batch}, no Grain",
           [time_raw(split, batch=args.batch, num_batches=args.loader_batches) for _ in range(args.repeats)], None)

    from jaxcxr.data import tfds_builder  # pylint: disable=g-import-not-at-top
    wall, cpu = time.perf_counter(), time.process_time()
    builder = tfds_builder.make_builder(directory, args.size)
    builder.download_and_prepare(download_config=tfds_builder.tfds.download.DownloadConfig(manual_dir=directory))
    record("TFDS ArrayRecord export of prepared images",
           [(len(meta) / (time.perf_counter() - wall), len(meta) / (time.process_time() - cpu))], None)
    sources = builder.as_data_source()
    parts = (sources["train_val"], sources["test"])
    names = [s[i]["image_id"].decode() for s in parts for i in range(len(s))]
    where = {n: i for i, n in enumerate(names)}
    tsplit = split_lib.Split("train", prepared.meta, tfds_builder.Images(parts),
                            np.asarray([where[n] for n in prepared.meta.names], np.int64))
    # The export is for other tools; training reads the memory-mapped array (row "loader, memmap").
    record("  reference: same loader over TFDS data source",
           [time_loader(tsplit, batch=args.batch, num_batches=args.loader_batches) for _ in range(args.repeats)], None)

    print(f"\n{args.num_images} PNGs of 1024x1024 (mean {mb:.2f} MB; NIH's average about 0.4 MB) -> {args.size} px; "
          f"{cores} CPU cores, load average {os.getloadavg()[0]:.1f}; medians of {args.repeats} runs. "
          "Per core = images per CPU-second of this process (all its threads) and its preparation workers, "
          "which a loaded machine distorts less than wall time; wall/process = wall img/s over the "
          "processes decoding (worker start-up included).")
    print(f"{'':52s} {'wall img/s':>11s} {'per core':>10s} {'wall/process':>13s} {'goal/core':>10s}")
    for name, wall, per_core, goal, processes in rows:
      mark = "" if goal is None else ("  ok" if per_core >= goal else "  below goal")
      per_process = f"{wall / processes:13.0f}" if processes else f"{'':13s}"
      print(f"{name:52s} {wall:11.0f} {per_core:10.0f} {per_process} {goal or '':>10}{mark}")
  finally:
    if not args.dir:
      shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  main()

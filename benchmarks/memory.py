"""Peak host memory (RSS) of preparation at two dataset sizes, of the demo's training and of evaluation.

  python -m benchmarks.memory --out=/tmp/jaxcxr_memory                     # the full demo (1,200 steps)
  python -m benchmarks.memory --out=/tmp/jaxcxr_memory --train_steps=200   # shortened training

Each command runs as its own process. Two figures per command:
  largest process  the kernel's peak RSS of the biggest single process of the command's tree (os.wait4's
                   ru_maxrss: the command and every worker it waited for), exact;
  tree total       the peak of the summed RSS of the command and all its live descendants, sampled every
                   0.1 s with psutil (so a spike shorter than that can be missed);
  tree anon        the same for private anonymous memory only (RssAnon): RSS also counts the pages of files
                   a process has mapped or written (e.g. the memory-mapped image array), which the kernel
                   can drop, so growth in RSS but not here is the page cache, not the process's own memory.
Stages:
  prepare N        `python -m jaxcxr.prepare --config=configs/demo.py` on a phantom set of N images (--sizes),
                   generated first by an unmeasured run of the same command whose prepared folder is then
                   deleted, so the figure is preparation alone (decoding, the memory-mapped array, TFDS export);
  train            `python -m jaxcxr.main --config=configs/demo.py` (the demo's 20,000 images, prepared by
                   the first run if not yet), with --train_steps steps;
  evaluate         `python -m jaxcxr.evaluate` of that run's best checkpoint on the test split.
"""

import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
import psutil

flags.DEFINE_string("out", "/tmp/jaxcxr_memory", "Folder for the phantom sets and the training run (reused).")
flags.DEFINE_list("sizes", ["2000", "16000"], "Phantom set sizes (images) preparation is measured at.")
flags.DEFINE_integer("train_steps", 1200, "Training steps (the demo's 1,200; fewer for a shortened run).")
flags.DEFINE_list("stages", ["prepare", "train", "evaluate"], "Which stages to measure.")
FLAGS = flags.FLAGS


def measure_exact(cmd):
  """Runs `cmd` under a one-line wrapper that reports the tree's largest-process peak RSS via wait4."""
  wrapper = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, st, ru = os.wait4(p.pid, 0); "
             "print('MAXRSS_KB', ru.ru_maxrss, os.waitstatus_to_exitcode(st), file=sys.stderr)")
  full = [sys.executable, "-c", wrapper, *cmd]
  print("$", " ".join(cmd), flush=True)
  t0 = time.perf_counter()
  proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  root = psutil.Process(proc.pid)
  tree_peak = anon_peak = 0
  while proc.poll() is None:
    total = anon = 0
    try:
      members = root.children(recursive=True)  # The wrapper itself is not counted.
    except psutil.Error:
      members = []
    for p in members:
      try:
        total += p.memory_info().rss
        anon += _rss_anon(p.pid)
      except (psutil.Error, OSError):
        pass
    tree_peak, anon_peak = max(tree_peak, total), max(anon_peak, anon)
    time.sleep(0.1)
  stderr = proc.stderr.read()
  seconds = time.perf_counter() - t0
  line = [l for l in stderr.splitlines() if l.startswith("MAXRSS_KB")]
  if not line or line[-1].split()[2] != "0":
    raise RuntimeError(f"{' '.join(cmd)} failed:\n" + "\n".join(stderr.splitlines()[-20:]))
  return {"seconds": seconds, "largest_process_mib": int(line[-1].split()[1]) / 1024,
          "tree_total_mib": tree_peak / 2**20, "tree_anon_mib": anon_peak / 2**20}


def _rss_anon(pid):
  """Bytes of private anonymous memory resident for `pid` (RssAnon in /proc/PID/status)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("RssAnon:"):
        return int(line.split()[1]) * 1024
  return 0


def main(argv):
  del argv
  py = sys.executable
  rows = []
  os.makedirs(FLAGS.out, exist_ok=True)
  if "prepare" in FLAGS.stages:
    for n in FLAGS.sizes:
      data = os.path.join(FLAGS.out, f"phantom_{n}")
      cmd = [py, "-m", "jaxcxr.prepare", "--config=configs/demo.py", f"--config.data.dir={data}",
             f"--config.data.phantom.num_images={n}"]
      if not os.path.isdir(data):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # Generates the phantom PNGs.
      shutil.rmtree(os.path.join(data, "jaxcxr_prepared"), ignore_errors=True)
      rows.append((f"prepare, {int(n):,} images (64 px, 2 processes, TFDS export)", measure_exact(cmd)))
  workdir = os.path.join(FLAGS.out, f"demo_{FLAGS.train_steps}")
  if "train" in FLAGS.stages:
    shutil.rmtree(workdir, ignore_errors=True)
    every = min(300, FLAGS.train_steps)
    cmd = [py, "-m", "jaxcxr.main", "--config=configs/demo.py", f"--workdir={workdir}",
           f"--config.train.num_steps={FLAGS.train_steps}", f"--config.train.eval_every={every}",
           f"--config.train.checkpoint_every={every}"]
    rows.append((f"demo training, {FLAGS.train_steps} steps", measure_exact(cmd)))
  if "evaluate" in FLAGS.stages:
    cmd = [py, "-m", "jaxcxr.evaluate", f"--workdir={workdir}"]
    rows.append(("evaluate (best checkpoint, test split, 1,000 bootstrap samples)", measure_exact(cmd)))
  print(f"\n{'command':<66} {'largest process':>16} {'tree total':>11} {'tree anon':>10} {'wall':>7}")
  for name, r in rows:
    print(f"{name:<66} {r['largest_process_mib']:>12.0f} MiB {r['tree_total_mib']:>7.0f} MiB "
          f"{r['tree_anon_mib']:>6.0f} MiB {r['seconds']:>6.0f}s")


if __name__ == "__main__":
  app.run(main)

"""jaxcxr's train step against torchvision (eager and torch.compile) for several models and sizes, in one run.

  python -m benchmarks.peer_rows --config=configs/demo.py \
      --rows=resnet18@28,resnet18@64,resnet18@128,densenet121@64 --batch_size=64 --json_out=/tmp/rows.json

Each row is one `python -m jaxcxr.bench --parts=step --peer=torchvision` process with the config's model name
and image size overridden (so each gets the whole device, and a GPU's memory is free for the PyTorch
children). Within a row the peer runs first, then jaxcxr's step, so the ratios compare figures measured
minutes apart at most. Prints one table; --json_out gets every row's full bench JSON.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

flags.DEFINE_string("config", "configs/demo.py", "Config file the rows start from.")
flags.DEFINE_list("rows", ["resnet18@28", "resnet18@64", "resnet18@128", "densenet121@64"],
                  "MODEL@PIXELS rows.")
flags.DEFINE_integer("batch_size", 64, "Global batch of every row.")
flags.DEFINE_integer("steps", 3, "Steps per timed window.")
flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
flags.DEFINE_integer("windows", 5, "Timed windows (the median is shown).")
flags.DEFINE_bool("peer_compile", True, "Also time the peer under torch.compile.")
flags.DEFINE_integer("peer_timeout", 1800, "Seconds each PyTorch child may run.")
flags.DEFINE_string("json_out", "", "Where to write all rows' results (JSON).")
FLAGS = flags.FLAGS


def run_row(model, size):
  fd, path = tempfile.mkstemp(prefix=f"peer_rows_{model}_{size}_", suffix=".json")
  os.close(fd)
  cmd = [sys.executable, "-m", "jaxcxr.bench", f"--config={FLAGS.config}", f"--config.model.name={model}",
         f"--config.data.image_size={size}", f"--config.train.batch_size={FLAGS.batch_size}", "--parts=step",
         "--peer=torchvision", f"--peer_compile={FLAGS.peer_compile}", f"--peer_timeout={FLAGS.peer_timeout}",
         f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}", f"--windows={FLAGS.windows}", f"--json_out={path}"]
  print("$", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  with open(path) as f:
    return json.load(f)


def _rate(part):
  return f"{part['images_per_s']:.1f}" if part and "images_per_s" in part else "-"


def _ratio(part):
  return f"{part['jaxcxr_over_torch']:.2f}x" if part and "jaxcxr_over_torch" in part else "-"


def main(argv):
  del argv
  results = []
  for row in FLAGS.rows:
    model, size = row.split("@")
    results.append(run_row(model, int(size)))
  header = ("model", "px", "jaxcxr img/s", "torch eager", "jaxcxr/eager", "torch.compile", "jaxcxr/compile")
  lines = [header]
  for r in results:
    p = r["parts"]
    eager, comp = p.get("peer_torchvision"), p.get("peer_torch_compile")
    lines.append((r["config"]["model"], str(r["config"]["image_size"]), _rate(p["step"]), _rate(eager),
                  _ratio(eager), _rate(comp) if comp else "-", _ratio(comp)))
  widths = [max(len(l[i]) for l in lines) for i in range(len(header))]
  print(f"\nbatch {FLAGS.batch_size}; median of {FLAGS.windows} windows of {FLAGS.steps} steps; images/s")
  for l in lines:
    print("  ".join(c.rjust(w) for c, w in zip(l, widths)))
  for r in results:
    for name, part in r["parts"].items():
      if "skipped" in part:
        print(f"{r['config']['model']}@{r['config']['image_size']} {name}: skipped: {part['skipped']}")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=2)
    print(f"JSON: {FLAGS.json_out}")


if __name__ == "__main__":
  app.run(main)

"""Metric logs: `metrics.jsonl` (one JSON object a line) and TensorBoard event files, process 0 only."""

import json
import os

import jax


class MetricWriter:
  """Writes scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard (tensorboardX, no TensorFlow)."""

  def __init__(self, workdir, *, resume_step=0):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._path = os.path.join(workdir, "metrics.jsonl")
    _truncate_after(self._path, resume_step)  # Steps past the restored checkpoint are redone.
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

  def write(self, step, scalars):
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items() if v is not None}
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def close(self):
    if self._active:
      self._tb.close()


def _truncate_after(path, step):
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(lines)

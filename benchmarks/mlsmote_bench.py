"""Time and peak memory of MLSMOTE on NIH-sized embeddings: 100,000 x 2,048 float32 rows, 14 labels.

  taskset -c 0,1 python -m benchmarks.mlsmote_bench           # 2 cores, as the target says
  python -m benchmarks.mlsmote_bench --rows=20000 --dim=512   # smaller

The rows are random (standard normal, shifted a little along one direction per label they carry, so that
rows sharing a label sit nearer each other) with labels drawn independently at NIH ChestX-ray14's
prevalences. Timed: `mlsmote.generate` alone, then `smote.resample(method='mlsmote')`, which also builds the
resampled array (real rows first, then synthetic: one copy of all the rows). Printed: wall time of each,
the process's peak resident memory (getrusage, which includes the input rows and the imported libraries)
and the resident memory before the first call, with the minority labels and their synthetic rows.
"""

import os
import resource
import time

from absl import app
from absl import flags
import numpy as np

from jaxcxr import mlsmote
from jaxcxr import smote
from jaxcxr.data import nih

flags.DEFINE_integer("rows", 100_000, "Training rows.")
flags.DEFINE_integer("dim", 2048, "Embedding width (ResNet-50's pooled features: 2,048).")
flags.DEFINE_integer("k_neighbors", 5, "MLSMOTE's k.")
FLAGS = flags.FLAGS

# Share of NIH ChestX-ray14 images carrying each finding (all 112,120 images), in nih.CLASSES order.
NIH_PREVALENCE = {
    "Atelectasis": 0.103, "Cardiomegaly": 0.025, "Effusion": 0.119, "Infiltration": 0.177, "Mass": 0.052,
    "Nodule": 0.056, "Pneumonia": 0.013, "Pneumothorax": 0.047, "Consolidation": 0.042, "Edema": 0.021,
    "Emphysema": 0.022, "Fibrosis": 0.015, "Pleural_Thickening": 0.030, "Hernia": 0.002,
}


def _peak_rss_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB.


def _rss_gib():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  n, d = FLAGS.rows, FLAGS.dim
  prevalence = np.array([NIH_PREVALENCE[c] for c in nih.CLASSES])
  labels = (rng.random((n, len(prevalence))) < prevalence).astype(np.uint8)
  features = rng.standard_normal((n, d), dtype=np.float32)
  directions = rng.standard_normal((len(prevalence), d), dtype=np.float32)
  for c in range(len(prevalence)):  # In place, a label at a time: no second (n, d) array.
    features[labels[:, c] == 1] += directions[c]
  print(f"{n:,} x {d:,} float32 rows ({features.nbytes / 2**30:.2f} GiB), {len(prevalence)} labels, "
        f"k={FLAGS.k_neighbors}; {os.cpu_count()} CPUs visible, affinity {len(os.sched_getaffinity(0))}")
  rss_before = _rss_gib()

  t = time.perf_counter()
  syn = mlsmote.generate(features, labels, k_neighbors=FLAGS.k_neighbors, seed=0, classes=nih.CLASSES)
  t_generate = time.perf_counter() - t
  peak_generate = _peak_rss_gib()
  del syn

  t = time.perf_counter()
  res = smote.resample(features, labels, method="mlsmote", k_neighbors=FLAGS.k_neighbors, ratio=0.1, seed=0,
                       classes=nih.CLASSES)
  t_resample = time.perf_counter() - t
  peak = _peak_rss_gib()

  for e in res.log:
    if e["minority"]:
      print(f"  minority {e['class']:<14} {e['n_pos']:>6,} rows  IRLbl {e['irlbl']:6.1f} (mean {e['mean_ir']:.1f})"
            f"  -> {e['synthetic']:,} synthetic")
  print(f"resident before: {rss_before:.2f} GiB")
  print(f"mlsmote.generate:                 {t_generate:7.1f} s   peak RSS {peak_generate:.2f} GiB")
  print(f"smote.resample(method='mlsmote'): {t_resample:7.1f} s   peak RSS {peak:.2f} GiB   "
        f"({len(res.features):,} rows out, {int(res.is_synthetic.sum()):,} synthetic)")


if __name__ == "__main__":
  app.run(main)

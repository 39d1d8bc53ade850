"""Times feature-space resampling plus head training on synthetic embeddings; prints seconds and peak RSS.

  python benchmarks/smote_bench.py                       # 100,000 x 2,048, 14 labels, SMOTE, linear head
  python benchmarks/smote_bench.py --method=adasyn --rows=20000 --head=mlp

The embeddings are random float32 rows (each class shifts a few dimensions, so positives cluster) with
NIH ChestX-ray14's prevalences (Hernia 0.2%). The workload is what `jaxcxr.smote` runs: one-vs-rest
resampling of every label up to --ratio, then --steps optimiser steps of the head. Target: 100k x 2,048
within 2 minutes and 8 GiB on 2 CPU cores. The machine's load average is printed with the figures, since
other work on a shared machine slows the run.
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

# NIH ChestX-ray14 prevalences in jaxcxr.data.nih.CLASSES order.
PREVALENCE = {"Atelectasis": 0.103, "Cardiomegaly": 0.025, "Effusion": 0.119, "Infiltration": 0.177,
              "Mass": 0.052, "Nodule": 0.056, "Pneumonia": 0.013, "Pneumothorax": 0.047,
              "Consolidation": 0.042, "Edema": 0.021, "Emphysema": 0.022, "Fibrosis": 0.015,
              "Pleural_Thickening": 0.030, "Hernia": 0.002}


def peak_rss_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux.


def synthetic_embeddings(*, rows, dim, classes, seed):
  rng = np.random.default_rng(seed)
  labels = np.stack([rng.random(rows) < PREVALENCE[c] for c in classes], 1).astype(np.uint8)
  features = rng.random((rows, dim), dtype=np.float32)  # Post-ReLU-like, non-negative.
  for c in range(len(classes)):
    dims = rng.choice(dim, 16, replace=False)
    features[np.ix_(labels[:, c] > 0, dims)] += 0.5
  return features, labels


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, default=100_000)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--method", default="smote", help="smote.method (random, smote, borderline1, ...).")
  parser.add_argument("--ratio", type=float, default=0.1, help="smote.ratio (base config default 0.1).")
  parser.add_argument("--k_neighbors", type=int, default=5)
  parser.add_argument("--head", default="linear", choices=("linear", "mlp"))
  parser.add_argument("--steps", type=int, default=2000, help="smote.steps (base config default 2000).")
  parser.add_argument("--batch_size", type=int, default=512)
  args = parser.parse_args()

  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # This checkout's jaxcxr.
  from configs import base  # pylint: disable=g-import-not-at-top
  from jaxcxr import heads  # pylint: disable=g-import-not-at-top
  from jaxcxr import resampling  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import nih  # pylint: disable=g-import-not-at-top

  config = base.get_config()
  s = config.smote
  s.method, s.ratio, s.k_neighbors, s.head, s.steps, s.batch_size = (
      args.method, args.ratio, args.k_neighbors, args.head, args.steps, args.batch_size)
  features, labels = synthetic_embeddings(rows=args.rows, dim=args.dim, classes=nih.CLASSES, seed=0)
  rss_data = peak_rss_gib()
  hernia = int(labels[:, nih.CLASSES.index("Hernia")].sum())
  print(f"{args.rows:,} x {args.dim:,} float32 embeddings ({features.nbytes / 2**30:.2f} GiB), "
        f"{len(nih.CLASSES)} labels, Hernia {hernia} positives; {os.cpu_count()} CPUs, "
        f"load average before {os.getloadavg()[0]:.1f}")

  t0 = time.perf_counter()
  res = resampling.resample(features, labels, method=s.method, k_neighbors=s.k_neighbors, ratio=s.ratio, seed=0,
                       progress=True)
  t1 = time.perf_counter()
  params, _, _, loss = heads.train_head(res.features, res.labels, head_config=s, loss_config=config.loss,
                                        seed=0, progress=True)
  del params
  t2 = time.perf_counter()
  print(f"resampling ({s.method}, ratio {s.ratio}, k {s.k_neighbors}): {t1 - t0:.1f} s -> "
        f"{len(res.features):,} rows ({int(res.is_synthetic.sum()):,} synthetic)")
  print(f"head training ({s.head}, {s.steps} steps of {s.batch_size}): {t2 - t1:.1f} s, final loss {loss:.4f}")
  print(f"TOTAL resampling + head: {t2 - t0:.1f} s; peak RSS {peak_rss_gib():.2f} GiB "
        f"(after making the data: {rss_data:.2f} GiB); load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()

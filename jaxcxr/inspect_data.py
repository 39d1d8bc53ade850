"""Shows what the training pipeline feeds the model: sampled class shares, repeats, augmented examples.

  python -m jaxcxr.inspect_data --config=configs/demo.py:oversample --num_batches=200
  python -m jaxcxr.inspect_data --config=configs/hernia.py:hybrid --config.data.dir=/data/chestxray14 \
      --num_batches=500 --json --out=/tmp/hernia_inspect

Draws --num_batches training batches exactly as training would (the config's sampling plan, seed and
batch size) and prints, per class, the share of sampled images that carry it against its prevalence in
the training split, then the images repeated most often with their counts. It writes a PNG grid of
training images with and without the target pathology: the original, then augmented versions made by the
very function the train step runs (columns that equal the original were left alone by the
minority-preferential probabilities). With --json it prints one JSON object instead: sampled_share,
prevalence, max_repeats, top_repeats, num_images, epoch_fraction and grid_png.
"""

import json
import os
import tempfile

from absl import flags
import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from ml_collections import config_flags
import numpy as np
import tqdm

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr.data import augment
from jaxcxr.data import datasets
from jaxcxr.data import nih
from jaxcxr.data import pipeline
from jaxcxr.data import sampling as sampling_lib

FLAGS = flags.FLAGS


def sample_indices(config, split, *, num_batches, progress=True):
  """Rows of `split` in the first `num_batches` global training batches of `config`."""
  it = pipeline.train_iterator(split, global_batch=config.train.batch_size, seed=config.seed,
                               sampling=config.data.sampling, target=config.data.target, with_index=True)
  out = [next(it)["index"] for _ in tqdm.trange(num_batches, desc="Sampling batches", unit="batch",
                                                disable=not progress)]
  return np.concatenate(out) if out else np.zeros(0, np.int64)


def augment_grid(config, split, *, path, rows_per_group=3, num_augmented=4, seed=0):
  """Writes a PNG grid: rows of target-positive then target-negative training images; columns the original
  then `num_augmented` augmented versions. Returns the path."""
  t = nih.CLASSES.index(config.data.target)
  labels = split.meta.labels
  rng = np.random.default_rng(seed)
  pos, neg = np.flatnonzero(labels[:, t] > 0.5), np.flatnonzero(labels[:, t] < 0.5)
  rows = [(i, True) for i in rng.permutation(pos)[:rows_per_group]]
  rows += [(i, False) for i in rng.permutation(neg)[:rows_per_group]]
  fn = augment.make_augment_fn(config)
  idx = np.asarray([i for i, _ in rows], np.int64)
  images = np.asarray(split.images[split.rows[idx]])[..., None]
  row_labels = labels[idx].astype(np.float32)
  columns = [images.astype(np.float32)]
  if fn is not None:
    fn = jax.jit(fn)
    columns += [np.asarray(fn(jax.random.key(k), images, row_labels)) for k in range(num_augmented)]
  fig = Figure(figsize=(1.6 * len(columns), 1.7 * len(rows) + 0.4), dpi=100)
  FigureCanvasAgg(fig)
  for r, (i, positive) in enumerate(rows):
    for c, col in enumerate(columns):
      ax = fig.add_subplot(len(rows), len(columns), r * len(columns) + c + 1)
      ax.imshow(col[r, ..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
      if c == 0:
        ax.set_ylabel(f"{config.data.target} {'+' if positive else '-'}\n{split.meta.names[i]}", fontsize=6)
  title = f"{config.data.target}: rows 1-{sum(p for _, p in rows)} positive, the rest negative"
  fig.suptitle(title if fn is not None else title + " (augmentation off)", fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  return path


def inspect(config, *, num_batches, out_dir, top=10, splits=None, progress=True):
  """The inspection summary (see the module docstring) as a dict; writes the grid PNG to `out_dir`."""
  if num_batches < 1:
    raise ValueError(f"--num_batches must be at least 1, got {num_batches}.")
  splits = datasets.load_splits(config) if splits is None else splits
  split = splits["train"]
  labels = split.meta.labels
  idx = sample_indices(config, split, num_batches=num_batches, progress=progress)
  counts = np.bincount(idx, minlength=len(split))
  order = np.argsort(-counts, kind="stable")[:top]
  plan = sampling_lib.make_plan(labels, config.data.sampling, target=config.data.target, seed=config.seed)
  classes = list(nih.CLASSES) + ["No Finding"]
  with_nf = np.concatenate([labels, (labels.sum(1) == 0)[:, None]], 1).astype(np.float64)
  name = f"augment_grid_{config.arm or 'config'}.png"
  grid = augment_grid(config, split, path=os.path.join(out_dir, name), seed=config.seed)
  return {
      "config_arm": config.arm, "target": config.data.target, "sampling": config.data.sampling.name,
      "num_batches": int(num_batches), "num_images": int(len(idx)), "train_images": int(len(split)),
      "epoch_fraction": float(len(idx) / max(plan.epoch_length, 1)),
      "sampled_share": dict(zip(classes, with_nf[idx].mean(0).tolist())),
      "prevalence": dict(zip(classes, with_nf.mean(0).tolist())),
      "max_repeats": int(counts.max()) if len(idx) else 0,
      "distinct_images": int((counts > 0).sum()),
      "top_repeats": [{"image": split.meta.names[i], "count": int(counts[i]),
                       "labels": [c for c, y in zip(nih.CLASSES, labels[i]) if y > 0.5] or ["No Finding"]}
                      for i in order if counts[i] > 0],
      "grid_png": os.path.abspath(grid),
  }


def format_summary(s):
  """The human-readable tables of an `inspect` result."""
  lines = [f"{s['num_images']} training images in {s['num_batches']} batches (sampling '{s['sampling']}', "
           f"{s['epoch_fraction']:.2f} of an epoch; {s['distinct_images']} of {s['train_images']} images seen)",
           "", f"{'class':<20}{'prevalence':>12}{'sampled':>10}{'x':>8}"]
  for c, p in s["prevalence"].items():
    share = s["sampled_share"][c]
    mark = "  <- target" if c == s["target"] else ""
    lines.append(f"{c:<20}{p:>12.4f}{share:>10.4f}{share / p if p else float('nan'):>8.2f}{mark}")
  lines += ["", f"Most repeated images (max {s['max_repeats']}):"]
  lines += [f"  {r['count']:>5}  {r['image']}  {', '.join(r['labels'])}" for r in s["top_repeats"]]
  lines += ["", f"Augmentation grid: {s['grid_png']}"]
  return "\n".join(lines)


config_flags.DEFINE_config_file("config", None, "Config file with optional arm, e.g. configs/demo.py:oversample.",
                                lock_config=True)
flags.DEFINE_integer("num_batches", 100, "Training batches (of train.batch_size images) to draw.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")
flags.DEFINE_string("out", os.path.join(tempfile.gettempdir(), "jaxcxr_inspect"),
                    "Folder for the augmentation grid PNG.")
flags.DEFINE_integer("top", 10, "How many of the most repeated images to list.")
flags.mark_flags_as_required(["config"])


def main(argv):
  cli.start(argv)
  config_check.check(FLAGS.config)
  with cli.user_errors("jaxcxr.inspect_data", nih.DataError, ValueError):
    summary = inspect(FLAGS.config, num_batches=FLAGS.num_batches, out_dir=FLAGS.out, top=FLAGS.top,
                      progress=not FLAGS.json)
  print(json.dumps(summary) if FLAGS.json else format_summary(summary))


if __name__ == "__main__":
  cli.run(main, "jaxcxr.inspect_data")

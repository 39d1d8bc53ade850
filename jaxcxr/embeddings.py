"""Pooled penultimate features of every image from a checkpoint: computation, saving and loading.

The files, one per split under WORKDIR/embeddings/ (`train.npz`, `val.npz`, `test.npz`, plus `meta.json`),
are plain `np.savez` archives that load with `np.load(path, allow_pickle=False)`:

  features        (N, D) float32   the model's globally pooled features (the head's input)
  labels          (N, 14) uint8    in nih.CLASSES order
  image_ids       (N,) str         image file names; an augmented view is '<name>#view<k>'
  patient_ids     (N,) int64
  is_view         (N,) bool        True for the augmented views (train only; never in val or test)
  backbone_probs  (N, 14) float32  the model's own probabilities, sigmoid(features @ head kernel + bias)

Views (`smote.views` = K > 0): each training image whose labels carry `data.target` gets K augmented copies
(jaxcxr.data.augment, one key per (image, view): `seed` folded with the view number, then the image's row),
embedded like the rest and appended to train with the source image's labels.
"""

import dataclasses
import functools
import json
import os
from typing import Optional, Union

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from jaxcxr import errors
from jaxcxr import model_context
from jaxcxr import runfolder
from jaxcxr.data import augment
from jaxcxr.data import nih
from jaxcxr.data import split as split_lib

SPLITS = ("train", "val", "test")
FIELDS = ("features", "labels", "image_ids", "patient_ids", "is_view", "backbone_probs")


class EmbeddingsError(errors.UserError):
  """The embeddings cannot be made or read as asked; the message says why and what to do."""


@dataclasses.dataclass
class Embeddings:
  """One split's rows: see the module docstring for the fields."""
  features: np.ndarray
  labels: np.ndarray
  image_ids: np.ndarray
  patient_ids: np.ndarray
  is_view: np.ndarray
  backbone_probs: np.ndarray

  def __len__(self):
    return len(self.features)

  def subset(self, idx):
    return Embeddings(**{f: getattr(self, f)[idx] for f in FIELDS})


def embeddings_dir(workdir: str) -> str:
  return os.path.join(runfolder.path(workdir), "embeddings")


# ----------------------------------------------------------------------------
# Computation.
# ----------------------------------------------------------------------------


def views_step(variables, view, images, labels, ids, *, model, augment_fn, seed):
  """(features, probabilities) of view `view` of each image; image i's augmentation key is
  fold_in(fold_in(key(seed), view), ids[i]), so every (image, view) pair draws its own."""
  base = jax.random.fold_in(jax.random.key(seed), view)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)
  return model_context.features_step(variables, augment_fn(keys, images, labels), model=model)


def split_rows(split: split_lib.Split, features, probs, *, view=None) -> Embeddings:
  """Embeddings of `split`'s rows; with view=(rows, k), of view k of the images `rows`."""
  idx = slice(None) if view is None else view[0]
  names = split.meta.names[idx]
  if view is not None:
    names = [f"{m}#view{view[1]}" for m in names]
  return Embeddings(features=np.asarray(features, np.float32), labels=split.meta.labels[idx].astype(np.uint8),
                    image_ids=np.asarray(names).astype(str),
                    patient_ids=split.meta.patients[idx].astype(np.int64),
                    is_view=np.full(len(features), view is not None),
                    backbone_probs=np.asarray(probs, np.float32))


def concat(parts) -> Embeddings:
  return Embeddings(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS})


def make_augment_fn(config, *, views):
  """jaxcxr.data.augment's jittable augmentation with the settings of `config.data.augment`, whether or
  not training itself augments (`data.augment.enabled`): views are always augmented."""
  if "augment" not in config.data:
    raise EmbeddingsError(f"smote.views={views} needs the data.augment block of configs/base.py, which this "
                          "config lacks; set --config.smote.views=0 or use a current config.")
  views_config = ml_collections.ConfigDict(config.to_dict())
  views_config.data.augment.enabled = True
  return augment.make_augment_fn(views_config)


def _view_images(split, rows, *, view, ctx, step_fn, progress):
  """(features, probs) of view `view` of the images `rows` of `split` (see `views_step` for the keys)."""
  out_f, out_p = [], []
  batch = ctx.eval_batch_size
  local = batch // jax.process_count()
  lo = jax.process_index() * local
  bar = tqdm.tqdm(total=len(rows), desc=f"embed train view {view + 1}", unit="img", dynamic_ncols=True,
                  disable=not progress or jax.process_index() != 0)
  for start in range(0, len(rows), batch):
    idx = np.arange(start + lo, start + lo + local)
    idx = idx[idx < len(rows)]
    images = np.zeros((local, *split.images.shape[1:], 1), np.uint8)
    images[:len(idx), ..., 0] = split.images[split.rows[rows[idx]]]
    labels = np.zeros((local, len(nih.CLASSES)), np.float32)
    labels[:len(idx)] = split.meta.labels[rows[idx]]
    ids = np.zeros(local, np.int32)
    ids[:len(idx)] = rows[idx]
    f, p = step_fn(view, *ctx.global_batch((images, labels, ids)))
    valid = min(batch, len(rows) - start)
    out_f.append(model_context.to_host(f)[:valid])
    out_p.append(model_context.to_host(p)[:valid])
    bar.update(valid)
  bar.close()
  return np.concatenate(out_f), np.concatenate(out_p)


def compute(ctx: model_context.ModelContext, variables, *, views: int = 0, seed: int = 0,
            progress: bool = True) -> dict:
  """{split: Embeddings} of every image of train, val and test under `variables`, plus `views` augmented
  views of each training image carrying the target (appended to train, marked is_view)."""
  out = {}
  for name in SPLITS:
    split = ctx.splits[name]
    f, p = ctx.features_split(variables, split, desc=f"embed {name}" if progress else None)
    out[name] = split_rows(split, f, p)
  if views:
    config = ctx.config
    split = ctx.splits["train"]
    rows = np.flatnonzero(split.meta.labels[:, nih.CLASSES.index(config.data.target)] > 0)
    augment_fn = make_augment_fn(config, views=views)
    data = ctx.data_sharding
    step = jax.jit(functools.partial(views_step, model=ctx.model, augment_fn=augment_fn, seed=seed),
                   in_shardings=(ctx.replicated, None, data, data, data),
                   out_shardings=(ctx.replicated, ctx.replicated))
    parts = [out["train"]]
    for k in range(views):
      f, p = _view_images(split, rows, view=k, ctx=ctx, progress=progress,
                          step_fn=lambda view, *batch: step(variables, view, *batch))
      parts.append(split_rows(split, f, p, view=(rows, k)))
    out["train"] = concat(parts)
    logging.info("Added %d views of each of the %d training images with %s.", views, len(rows),
                 config.data.target)
  return out


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


def save(embeddings: dict, out_dir: str, *, meta: dict) -> None:
  """Writes {split}.npz (no pickled objects) and meta.json to `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  for name, e in embeddings.items():
    tmp = os.path.join(out_dir, f"{name}.tmp.npz")
    np.savez(tmp, **{f: getattr(e, f) for f in FIELDS})
    os.replace(tmp, os.path.join(out_dir, f"{name}.npz"))
  with open(os.path.join(out_dir, "meta.json"), "w") as f:
    json.dump({**meta, "rows": {n: len(e) for n, e in embeddings.items()}}, f, indent=2)
    f.write("\n")


def load(out_dir: str) -> tuple[dict, dict]:
  """({split: Embeddings}, meta) from `out_dir`, read without pickle."""
  meta_path = os.path.join(out_dir, "meta.json")
  if not os.path.exists(meta_path):
    raise EmbeddingsError(f"No embeddings in {out_dir} ({meta_path} not found): run "
                          "python -m jaxcxr.export_embeddings --config=... --workdir=... first.")
  with open(meta_path) as f:
    meta = json.load(f)
  out = {}
  for name in SPLITS:
    path = os.path.join(out_dir, f"{name}.npz")
    try:
      with np.load(path, allow_pickle=False) as z:
        missing = [f for f in FIELDS if f not in z.files]
        if missing:
          raise EmbeddingsError(f"{path} lacks {', '.join(missing)}; export the embeddings again.")
        out[name] = Embeddings(**{f: z[f] for f in FIELDS})
    except FileNotFoundError:
      raise EmbeddingsError(f"{path} not found; export the embeddings again.") from None
  return out, meta


# ----------------------------------------------------------------------------
# Export from a run.
# ----------------------------------------------------------------------------


def export(ctx: model_context.ModelContext, *, checkpoint: Union[str, int] = "best",
           views: Optional[int] = None, out_dir: Optional[str] = None, progress: bool = True) -> tuple[dict, dict]:
  """Embeds every image of the run's splits from `checkpoint` and saves them (process 0).

  Args:
    ctx: the run's model context (`ModelContext.from_workdir(workdir)`, or the one training returned).
    checkpoint: 'best', 'latest' or a step number.
    views: augmented views per target-positive training image (default config.smote.views).
    out_dir: default WORKDIR/embeddings.
    progress: show progress bars.

  Returns:
    ({split: Embeddings}, meta).
  """
  config = ctx.config
  views = int((config.smote.views if "smote" in config else 0) if views is None else views)
  if views < 0:
    raise EmbeddingsError(f"smote.views must be >= 0, got {views}.")
  if views:
    make_augment_fn(config, views=views)  # Fail before the long part.
  step, variables = ctx.restore(checkpoint)
  logging.info("Embedding train, val and test with the checkpoint at step %d (%s).", step, checkpoint)
  embeddings = compute(ctx, variables, views=views, seed=config.seed, progress=progress)
  meta = {"checkpoint_step": int(step), "checkpoint": str(checkpoint), "model": config.model.name,
          "feature_dim": int(embeddings["train"].features.shape[1]), "classes": list(nih.CLASSES),
          "target": config.data.target, "views": views, "split": config.data.split}
  out_dir = out_dir or embeddings_dir(ctx.workdir)
  if jax.process_index() == 0:
    save(embeddings, out_dir, meta=meta)
    logging.info("Embeddings (%s rows) -> %s", ", ".join(f"{n} {len(e)}" for n, e in embeddings.items()),
                 out_dir)
  return embeddings, meta

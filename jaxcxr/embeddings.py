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
(jaxcxr.data.augment, keys folded from `seed` and the view number), embedded like the rest and appended to
train with the source image's labels.
"""

import dataclasses
import functools
import json
import os
from typing import Optional, Union

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxcxr import errors
from jaxcxr import train
from jaxcxr.data import datasets
from jaxcxr.data import nih
from jaxcxr.data import pipeline

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
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "embeddings")


# ----------------------------------------------------------------------------
# Computation.
# ----------------------------------------------------------------------------


def features_step(state, batch):
  """(features (B, D) float32, probabilities (B, 14)) of a global batch of uint8 or [0, 255] images."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  feats = state.apply_fn(variables, train.normalize(batch["image"]), train=False, features=True)
  head = state.params["head"]
  logits = feats @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)
  return feats.astype(jnp.float32), jax.nn.sigmoid(logits)


def views_step(state, batch, key, *, augment_fn):
  """features_step of `augment_fn(key, images, labels)`: one augmented view of each image."""
  images = augment_fn(key, batch["image"], batch["labels"])
  return features_step(state, {"image": images})


def _jit(trainer, fn, *, extra_args=0):
  """jit of fn(state, batch, *extra): batch sharded over 'data', state and extras replicated."""
  data = trainer.data_sharding
  return jax.jit(fn, in_shardings=(trainer.replicated, data) + (trainer.replicated,) * extra_args,
                 out_shardings=(trainer.replicated, trainer.replicated))


def _batches(split, rows, *, global_batch):
  """Like pipeline.eval_batches over the images `rows` of `split` (with their labels)."""
  local = global_batch // jax.process_count()
  size = split.images.shape[1:]
  labels = split.meta.labels.astype(np.float32)
  for start in range(0, len(rows), global_batch):
    idx = np.arange(start + jax.process_index() * local, start + (jax.process_index() + 1) * local)
    idx = idx[idx < len(rows)]
    images = np.zeros((local, *size, 1), np.uint8)
    images[:len(idx), ..., 0] = split.images[split.rows[rows[idx]]]
    lab = np.zeros((local, labels.shape[1]), np.float32)
    lab[:len(idx)] = labels[rows[idx]]
    yield {"image": images, "labels": lab}, min(global_batch, len(rows) - start)


def _run(trainer, step_fn, batches, *, total, desc, progress):
  """Runs `step_fn(global batch) -> (features, probs)` over `batches`; returns the real rows on the host."""
  feats, probs = [], []
  bar = tqdm.tqdm(total=total, desc=desc, unit="img", disable=not progress or jax.process_index() != 0,
                  dynamic_ncols=True)
  for local, valid in batches:
    f, p = step_fn(trainer.global_batch(local))
    feats.append((f, valid))
    probs.append(p)
    bar.update(valid)
  bar.close()
  if not feats:
    return np.zeros((0, 0), np.float32), np.zeros((0, len(nih.CLASSES)), np.float32)
  f = np.concatenate([train.to_host(x)[:v] for x, v in feats])
  p = np.concatenate([train.to_host(x)[:v] for x, (_, v) in zip(probs, feats)])
  return f, p.astype(np.float32)


def split_rows(split: datasets.Split, features, probs, *, view=None) -> Embeddings:
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
  """jaxcxr.data.augment's jittable augmentation with the probabilities and strengths of
  `config.data.augment`, whether or not training itself augments (`data.augment.enabled`): views are
  always augmented."""
  from jaxcxr.data import augment  # pylint: disable=g-import-not-at-top
  if "augment" not in config.data:
    raise EmbeddingsError(f"smote.views={views} needs the data.augment block of configs/base.py, which this "
                          "config lacks; set --config.smote.views=0 or use a current config.")
  views_config = ml_collections.ConfigDict(config.to_dict())
  views_config.data.augment.enabled = True
  return augment.make_augment_fn(views_config)


def compute(trainer: train.Trainer, state, *, views: int = 0, seed: int = 0,
            progress: bool = True) -> dict:
  """{split: Embeddings} of every image of train, val and test under `state`, plus `views` augmented
  views of each training image carrying the target (appended to train, marked is_view)."""
  step = _jit(trainer, features_step)
  out = {}
  for name in SPLITS:
    split = trainer.splits[name]
    batches = pipeline.eval_batches(split, global_batch=trainer.eval_batch_size,
                                    process_index=jax.process_index(), process_count=jax.process_count())
    f, p = _run(trainer, lambda b: step(state, b), batches, total=len(split), desc=f"embed {name}",
                progress=progress)
    out[name] = split_rows(split, f, p)
  if views:
    split = trainer.splits["train"]
    rows = np.flatnonzero(split.meta.labels[:, trainer.target] > 0)
    augment_fn = make_augment_fn(trainer.config, views=views)
    vstep = _jit(trainer, functools.partial(views_step, augment_fn=augment_fn), extra_args=1)
    parts = [out["train"]]
    base = jax.random.key(seed)
    for k in range(views):
      key = jax.device_put(jax.random.fold_in(base, k), trainer.replicated)
      batches = _batches(split, rows, global_batch=trainer.eval_batch_size)
      f, p = _run(trainer, lambda b, key=key: vstep(state, b, key), batches, total=len(rows),
                  desc=f"embed train view {k + 1}/{views}", progress=progress)
      parts.append(split_rows(split, f, p, view=(rows, k)))
    out["train"] = concat(parts)
    logging.info("Added %d views of each of the %d training images with %s.", views, len(rows),
                 trainer.config.data.target)
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


def export(config: ml_collections.ConfigDict, workdir: str, *, checkpoint: Union[str, int] = "best",
           views: Optional[int] = None, out_dir: Optional[str] = None,
           trainer: Optional[train.Trainer] = None, progress: bool = True) -> tuple[dict, dict]:
  """Embeds every image of the run's splits from `checkpoint` and saves them (process 0).

  Args:
    config: the run's config.
    workdir: the training run's folder (holding checkpoints/).
    checkpoint: 'best', 'latest' or a step number.
    views: augmented views per target-positive training image (default config.smote.views).
    out_dir: default WORKDIR/embeddings.
    trainer: a Trainer of this run already built, to reuse.
    progress: show progress bars.

  Returns:
    ({split: Embeddings}, meta).
  """
  from jaxcxr import evaluate  # pylint: disable=g-import-not-at-top  (evaluate imports train too)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  views = int((config.smote.views if "smote" in config else 0) if views is None else views)
  if views < 0:
    raise EmbeddingsError(f"smote.views must be >= 0, got {views}.")
  if trainer is None:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))):
      raise EmbeddingsError(f"No checkpoints in {ckpt_dir}: train first (python -m jaxcxr.main "
                            f"--config=... --workdir={workdir}).")
    evaluate.check_config(config, workdir)
    trainer = train.Trainer(evaluate._eval_config(config), workdir)  # pylint: disable=protected-access
  if views:
    make_augment_fn(config, views=views)  # Fail before the long part.
  step = evaluate.resolve_checkpoint(trainer.ckpt, checkpoint)
  state = trainer.restore(step)
  logging.info("Embedding train, val and test with the checkpoint at step %d (%s).", step, checkpoint)
  embeddings = compute(trainer, state, views=views, seed=config.seed, progress=progress)
  meta = {"checkpoint_step": int(step), "checkpoint": str(checkpoint), "model": config.model.name,
          "feature_dim": int(embeddings["train"].features.shape[1]), "classes": list(nih.CLASSES),
          "target": config.data.target, "views": views, "split": config.data.split}
  out_dir = out_dir or embeddings_dir(workdir)
  if jax.process_index() == 0:
    save(embeddings, out_dir, meta=meta)
    logging.info("Embeddings (%s rows) -> %s", ", ".join(f"{n} {len(e)}" for n, e in embeddings.items()),
                 out_dir)
  return embeddings, meta

"""Feature-space SMOTE: resample a run's training embeddings, train a new head on them, report, write back.

  python -m jaxcxr.export_embeddings --config=configs/demo.py:smote --workdir=/tmp/demo_smote
  python -m jaxcxr.smote --config=configs/demo.py:smote --workdir=/tmp/demo_smote
  python -m jaxcxr.evaluate --workdir=/tmp/demo_smote/smote      # the combined model, on images

(`python -m jaxcxr.main --config=configs/demo.py:smote --workdir=W` runs all of it after training.)
Without --config, WORKDIR/config.json is used; override fields with --config.smote.method=adasyn etc.

1. Resampling (`smote.method`: none, random, smote, borderline1, borderline2, adasyn) with imbalanced-learn,
   fitted on the TRAINING embeddings only (validation and test never reach it), one label at a time:
   imbalanced-learn rejects multi-label targets, so for each label whose positives / negatives is below
   `smote.ratio`, X is resampled against that label's 0/1 column up to that ratio and the new positive
   rows are kept ('random' and 'smote', which draw from the positives alone, are handed only the
   positives and 1,000 negatives with the same count to make: the same points, far less copying). A
   synthetic row's other 13 labels are copied from its nearest real positive of that label (its own
   label is 1): SMOTE's points lie between two such neighbours, whose findings it most likely shares;
   setting the other labels to 0 would teach the head that they are absent. A label with too few
   positives for `smote.k_neighbors` is resampled with k = positives - 1, by duplication when it has a
   single positive, and skipped when it has none; each case is logged.
2. A new head ('linear' or 'mlp') is trained with optax on the resampled features (standardised with
   their mean and deviation) with the configured loss (`smote.loss`, default `loss.name`).
3. Thresholds are chosen on the validation embeddings (`train.threshold_rule`) and the test split is
   reported in the trainer's format, with the backbone's own metrics (same checkpoint, same rule) beside
   it, in WORKDIR/smote/: report.json (key `backbone`), report.md, roc.png, pr.png.
4. Write-back (linear head only): the standardisation is folded into the kernel and bias, which replace
   params['head'] of the backbone checkpoint; the result is saved with Orbax as WORKDIR/smote/checkpoints
   (with config.json) so that `python -m jaxcxr.evaluate --workdir=WORKDIR/smote` scores images with it.
   An MLP head has no place in the ResNet's single Dense head and is reported on embeddings only.
"""

import dataclasses
import functools
import math
import os
import shutil
from typing import Optional

from absl import flags
from absl import logging
import imblearn.over_sampling
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp
from sklearn.neighbors import NearestNeighbors
import tqdm

from jaxcxr import cli
from jaxcxr import config_check
from jaxcxr import embeddings as emb_lib
from jaxcxr import errors
from jaxcxr import losses
from jaxcxr import metrics as metrics_lib
from jaxcxr import train
from jaxcxr.data import nih

METHODS = ("none", "random", "smote", "borderline1", "borderline2", "adasyn")
HEADS = ("linear", "mlp")


class SmoteError(errors.UserError):
  """The SMOTE stage cannot run as asked; the message says why and what to do."""


def check_config(config: ml_collections.ConfigDict, *, check_augment: bool = False) -> None:
  """Fails fast on a bad `config.smote` (before any training); with `check_augment`, also checks the
  data.augment settings that views use."""
  s = config.smote
  if s.method not in METHODS:
    raise SmoteError(f"smote.method must be one of {', '.join(METHODS)}, got {s.method!r}.")
  if s.head not in HEADS:
    raise SmoteError(f"smote.head must be one of {', '.join(HEADS)}, got {s.head!r}.")
  if s.loss and s.loss not in losses.LOSS_NAMES:
    raise SmoteError(f"smote.loss must be '' or one of {', '.join(losses.LOSS_NAMES)}, got {s.loss!r}.")
  if s.k_neighbors < 1 or s.ratio <= 0 or s.steps < 1 or s.batch_size < 1 or s.views < 0 or s.hidden < 1:
    raise SmoteError("Need smote.k_neighbors >= 1, smote.ratio > 0, smote.steps >= 1, smote.batch_size >= 1, "
                     f"smote.views >= 0 and smote.hidden >= 1; got {s.k_neighbors}, {s.ratio}, {s.steps}, "
                     f"{s.batch_size}, {s.views}, {s.hidden}.")
  if check_augment and s.views:
    emb_lib.make_augment_fn(config, views=s.views)  # Raises on bad data.augment settings.


# ----------------------------------------------------------------------------
# Resampling, one label at a time.
# ----------------------------------------------------------------------------


def make_resampler(method: str, *, k_neighbors: int, ratio, seed: int):
  """The imbalanced-learn over-sampler of `method` for one binary problem; `ratio` is its sampling_strategy:
  positives / negatives after resampling, or {1: number of positives after resampling}."""
  common = dict(sampling_strategy=ratio, random_state=seed)
  if method == "random":
    return imblearn.over_sampling.RandomOverSampler(**common)
  if method == "smote":
    return imblearn.over_sampling.SMOTE(k_neighbors=k_neighbors, **common)
  if method in ("borderline1", "borderline2"):
    return imblearn.over_sampling.BorderlineSMOTE(k_neighbors=k_neighbors, kind=f"borderline-{method[-1]}",
                                                  **common)
  if method == "adasyn":
    return imblearn.over_sampling.ADASYN(n_neighbors=k_neighbors, **common)
  raise SmoteError(f"smote.method must be one of {', '.join(METHODS[1:])} here, got {method!r}.")


@dataclasses.dataclass
class Resampled:
  """Training rows after resampling: the real rows first, then the synthetic ones."""
  features: np.ndarray  # (N + S, D) float32
  labels: np.ndarray  # (N + S, C) uint8
  is_synthetic: np.ndarray  # (N + S,) bool
  origin_class: np.ndarray  # (N + S,) int: the label a synthetic row was made for; -1 for real rows.
  log: list  # One dict per class: what was done and why.


# Methods whose synthetic points depend only on the minority rows and the random state.
MINORITY_ONLY = ("random", "smote")


def resample(features, labels, *, method: str, k_neighbors: int, ratio: float, seed: int,
             classes=nih.CLASSES, progress: bool = False, negatives_kept: int = 1000) -> Resampled:
  """One-vs-rest resampling of training rows (see the module docstring).

  For 'random' and 'smote' (MINORITY_ONLY), whose new points are drawn from the positives alone,
  imbalanced-learn is handed a label's positives and only its first `negatives_kept` negatives (it needs
  both classes), with the number of positives the full rows would give (int(ratio * negatives) more) as
  an explicit sampling_strategy: the points are the same as with all N rows, without imbalanced-learn's
  two copies of the whole (N, D) array per label. 'borderline1', 'borderline2' and 'adasyn' look at the
  negatives around each positive and always get all the rows.

  Args:
    features: (N, D) float32 training features (and only those).
    labels: (N, C) 0/1 labels.
    method: one of METHODS ('none' returns the rows unchanged).
    k_neighbors: SMOTE's neighbours among a label's positives (ADASYN's n_neighbors).
    ratio: desired positives / negatives of each label after resampling.
    seed: random state of the resamplers (label c uses seed + c).
    classes: the C class names, for the log.
    progress: show a progress bar over the labels.
    negatives_kept: negatives handed to imbalanced-learn with the positives for MINORITY_ONLY methods (all
      rows when a label has no more negatives than this).

  Returns:
    Resampled, real rows first.
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels).astype(np.uint8)
  n, num_classes = labels.shape
  new_x, new_y, new_c, log = [], [], [], []
  for c in tqdm.trange(num_classes, desc=f"resample ({method})", disable=not progress, dynamic_ncols=True):
    y = labels[:, c].astype(np.int64)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    entry = {"class": classes[c], "n_pos": n_pos, "n_neg": n_neg, "method": method, "k_neighbors": k_neighbors,
             "synthetic": 0}
    log.append(entry)
    if method == "none":
      entry["note"] = "no resampling (smote.method='none')"
      continue
    if n_pos == 0 or n_neg == 0:
      entry["note"] = "skipped: no positives" if n_pos == 0 else "skipped: no negatives"
      logging.warning("SMOTE: %s has %d positives and %d negatives in training; skipped.", classes[c], n_pos,
                      n_neg)
      continue
    if int(ratio * n_neg - n_pos) <= 0:  # imbalanced-learn's count of points to add.
      entry["note"] = f"skipped: positives / negatives {n_pos / n_neg:.3f} already >= smote.ratio {ratio}"
      continue
    used, k = method, k_neighbors
    if method != "random" and n_pos <= k:
      if n_pos >= 2:
        k = n_pos - 1
        note = (f"{n_pos} positives are too few for k_neighbors={k_neighbors}: {method} with "
                f"k_neighbors={k}")
      else:
        used = "random"
        note = f"1 positive is too few for {method}: random duplication instead"
      logging.warning("SMOTE: %s: %s.", classes[c], note)
      entry.update(note=note, method=used, k_neighbors=k)
    n_new = int(ratio * n_neg - n_pos)
    pick = functools.partial(_resample_label, features, y, k=k, ratio=ratio, n_new=n_new, seed=seed + c,
                             negatives_kept=negatives_kept)
    try:
      xs = pick(used)
    except (RuntimeError, ValueError) as e:
      if used not in ("adasyn", "borderline1", "borderline2"):
        raise
      # ADASYN refuses when no positive has a negative neighbour; then plain SMOTE generates the points.
      note = f"{used} failed ({e}); smote instead"
      logging.warning("SMOTE: %s: %s.", classes[c], note)
      used = "smote"
      entry.update(note=note, method=used)
      xs = pick(used)
    if len(xs) == 0:
      entry.setdefault("note", f"{used} generated no points")
      logging.warning("SMOTE: %s: %s.", classes[c], entry["note"])
      continue
    pos = np.flatnonzero(y == 1)
    # Other labels: copied from the nearest real positive of this label.
    nearest = NearestNeighbors(n_neighbors=1).fit(features[pos]).kneighbors(xs, return_distance=False)[:, 0]
    ys = labels[pos[nearest]].copy()
    ys[:, c] = 1
    new_x.append(xs)
    new_y.append(ys)
    new_c.append(np.full(len(xs), c, np.int64))
    entry["synthetic"] = int(len(xs))
    logging.info("SMOTE: %s: %d positives, %d negatives -> %d synthetic positives (%s).", classes[c], n_pos,
                 n_neg, len(xs), used)
  num_new = sum(len(x) for x in new_x)
  return Resampled(
      features=np.concatenate([features, *new_x]) if num_new else features,
      labels=np.concatenate([labels, *new_y]) if num_new else labels,
      is_synthetic=np.concatenate([np.zeros(n, bool), np.ones(num_new, bool)]),
      origin_class=np.concatenate([np.full(n, -1, np.int64), *new_c]),
      log=log)


def _resample_label(features, y, method, *, k, ratio, n_new, seed, negatives_kept):
  """The synthetic positives for the binary target `y`: from the positives and a few negatives for
  MINORITY_ONLY methods with more than `negatives_kept` negatives (see `resample`), else from all rows."""
  neg = np.flatnonzero(y == 0)
  if method not in MINORITY_ONLY or len(neg) <= negatives_kept:
    return _fit_resample(method, features, y, k=k, ratio=ratio, seed=seed)
  # Sorted rows keep the positives in their order, so the neighbours and random draws are those of the
  # full-rows call; the explicit count replaces the ratio, which would be taken of the kept negatives.
  rows = np.sort(np.concatenate([np.flatnonzero(y == 1), neg[:negatives_kept]]))
  n_pos = len(rows) - negatives_kept
  return _fit_resample(method, features[rows], y[rows], k=k, ratio={1: n_pos + n_new}, seed=seed)


def _fit_resample(method, features, y, *, k, ratio, seed):
  """The synthetic positive rows the resampler adds for the binary target `y`."""
  x_res, y_res = make_resampler(method, k_neighbors=k, ratio=ratio, seed=seed).fit_resample(features, y)
  xs, ys = x_res[len(features):], y_res[len(features):]
  if not np.all(ys == 1):  # imbalanced-learn appends the new rows after the originals, all positive.
    raise RuntimeError(f"{method} returned rows that are not new positives.")
  return np.array(xs, np.float32)  # A copy: a view would keep the whole resampled array alive.


# ----------------------------------------------------------------------------
# The head.
# ----------------------------------------------------------------------------


def init_head(kind: str, *, dim: int, num_classes: int, hidden: int, prior, seed: int) -> dict:
  """Parameters of a linear head (zero kernel) or an MLP (He-initialised hidden layer); the output bias
  starts at the log prior odds `prior` (num_classes,)."""
  p = np.clip(np.asarray(prior, np.float64), 1e-4, 1 - 1e-4)
  bias = jnp.asarray(np.log(p / (1 - p)), jnp.float32)
  if kind == "linear":
    return {"kernel": jnp.zeros((dim, num_classes), jnp.float32), "bias": bias}
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"hidden": {"kernel": jax.random.normal(k1, (dim, hidden)) * np.sqrt(2.0 / dim),
                     "bias": jnp.zeros((hidden,), jnp.float32)},
          "kernel": jax.random.normal(k2, (hidden, num_classes)) * np.sqrt(1.0 / hidden), "bias": bias}


def apply_head(params, x):
  """Logits of the head on standardised features `x`."""
  if "hidden" in params:
    x = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return x @ params["kernel"] + params["bias"]


def _train_chunk(params, opt_state, features, labels, mean, std, key, first, *, tx, loss_fn, steps,
                 batch_size):
  """`steps` optimiser steps from step `first`; each draws `batch_size` rows of the device arrays features
  (N, D) and labels (N, C) uniformly with replacement (key folded with the step number) and standardises
  them with mean / std. Returns the mean loss per step too."""
  def step(carry, i):
    params, opt_state = carry
    idx = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, features.shape[0])
    x = (features[idx] - mean) / std
    y = labels[idx]
    def loss(p):
      return loss_fn(apply_head(p, x), y).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value
  (params, opt_state), values = jax.lax.scan(step, (params, opt_state), first + jnp.arange(steps))
  return params, opt_state, values


def feature_moments(features, *, chunk: int = 8192):
  """Mean and standard deviation (+1e-6 variance) per column in float64, a block of rows at a time (no
  float64 copy of the whole array); returned as float32."""
  n, dim = features.shape
  total = np.zeros(dim, np.float64)
  for i in range(0, n, chunk):
    total += features[i:i + chunk].sum(0, dtype=np.float64)
  mean = total / max(n, 1)
  squares = np.zeros(dim, np.float64)
  for i in range(0, n, chunk):
    d = features[i:i + chunk] - mean
    squares += np.einsum("ij,ij->j", d, d)
  return mean.astype(np.float32), np.sqrt(squares / max(n, 1) + 1e-6).astype(np.float32)


def train_head(features, labels, *, smote_config, loss_config, seed: int, progress: bool = True,
               chunk: int = 100):
  """Trains a head on (resampled) training rows; returns (params, mean, std, final loss).

  Features are standardised with `mean`/`std` (of the rows given). The rows are put on the device once;
  each step draws its batch there, uniformly with replacement from a key of `seed`, inside the jitted
  scan over `chunk` steps, so no batch is copied from the host and the result depends only on the seed.
  """
  s = smote_config
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels, np.float32)
  n, dim = features.shape
  mean, std = feature_moments(features)
  num_pos = labels.sum(0)
  loss_fn = losses.get_loss_fn(loss_config, num_pos=num_pos, num_total=n)
  params = init_head(s.head, dim=dim, num_classes=labels.shape[1], hidden=s.hidden, prior=num_pos / n,
                     seed=seed)
  schedule = optax.cosine_decay_schedule(s.learning_rate, s.steps)
  tx = optax.adamw(schedule, weight_decay=s.weight_decay,
                   mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
  opt_state = tx.init(params)
  run = jax.jit(functools.partial(_train_chunk, tx=tx, loss_fn=loss_fn, batch_size=s.batch_size),
                static_argnames=("steps",), donate_argnums=(0, 1))
  on_device = jax.device_put((features, labels, mean, std))
  key = jax.random.fold_in(jax.random.key(seed), 1)  # init_head's MLP uses key(seed) itself.
  done, last = 0, float("nan")
  bar = tqdm.tqdm(total=s.steps, desc=f"train {s.head} head", unit="step",
                  disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
  while done < s.steps:
    m = min(chunk, s.steps - done)
    params, opt_state, values = run(params, opt_state, *on_device, key, done, steps=m)
    done += m
    bar.update(m)
    last = float(values[-1])
    if not math.isfinite(last):
      raise SmoteError(f"The head's loss is {last} near step {done}; lower smote.learning_rate.")
    bar.set_postfix(loss=f"{last:.4f}")
  bar.close()
  return jax.device_get(params), mean, std, last


def head_probs(params, mean, std, features, *, batch: int = 8192) -> np.ndarray:
  """Sigmoid of the head on raw features, in batches."""
  fn = jax.jit(lambda p, x: jax.nn.sigmoid(apply_head(p, (x - mean) / std)))
  out = [np.asarray(fn(params, features[i:i + batch])) for i in range(0, len(features), batch)]
  return np.concatenate(out) if out else np.zeros((0, params["bias"].shape[0]), np.float32)


def fold_linear(params, mean, std):
  """(kernel, bias) on raw features equal to the linear head on standardised ones."""
  kernel = np.asarray(params["kernel"], np.float64) / np.asarray(std, np.float64)[:, None]
  bias = np.asarray(params["bias"], np.float64) - np.asarray(mean, np.float64) @ kernel
  return kernel.astype(np.float32), bias.astype(np.float32)


# ----------------------------------------------------------------------------
# Report and write-back.
# ----------------------------------------------------------------------------


def smote_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "smote")


def _scores_report(config, *, val, test, val_scores, test_scores):
  thresholds = metrics_lib.select_thresholds(labels=val.labels, scores=val_scores,
                                             rule=config.train.threshold_rule,
                                             target_recall=config.train.target_recall)
  return metrics_lib.evaluate_scores(labels=test.labels, scores=test_scores, classes=nih.CLASSES,
                                     thresholds=thresholds)


def write_back(config, workdir: str, *, step: int, kernel, bias, val_metric: Optional[float],
               trainer: Optional[train.Trainer] = None) -> str:
  """Saves the backbone checkpoint `step` with params['head'] = (kernel, bias) as WORKDIR/smote/checkpoints."""
  from jaxcxr import evaluate  # pylint: disable=g-import-not-at-top
  out = smote_dir(workdir)
  if trainer is None:
    trainer = train.Trainer(evaluate._eval_config(config), workdir)  # pylint: disable=protected-access
  state = trainer.restore(step)
  head = state.params["head"]
  if head["kernel"].shape != kernel.shape:
    raise SmoteError(f"The head's kernel is {kernel.shape}, the model's {head['kernel'].shape}.")
  params = dict(state.params)
  params["head"] = {"kernel": jax.device_put(jnp.asarray(kernel, head["kernel"].dtype), trainer.replicated),
                    "bias": jax.device_put(jnp.asarray(bias, head["bias"].dtype), trainer.replicated)}
  state = state.replace(params=params)
  ckpt_dir = os.path.join(out, "checkpoints")
  if jax.process_index() == 0:
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # A rerun replaces the earlier write-back.
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  train._wait_for_all("jaxcxr_smote_writeback", timeout_s=600)  # pylint: disable=protected-access
  metric = 0.0 if val_metric is None else float(val_metric)
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
      best_fn=lambda m: m["val_target_auprc"], best_mode="max", create=True))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
               metrics={"val_target_auprc": metric})
  manager.wait_until_finished()
  manager.close()
  return ckpt_dir


def run(config: ml_collections.ConfigDict, workdir: str, *, embeddings: Optional[dict] = None,
        meta: Optional[dict] = None, trainer: Optional[train.Trainer] = None, progress: bool = True,
        verbose: bool = True) -> dict:
  """Resamples the run's training embeddings, trains the head, reports on test and writes back.

  Args:
    config: the run's config (its `smote` block drives this stage).
    workdir: the training run's folder; embeddings are read from WORKDIR/embeddings unless given.
    embeddings, meta: as returned by `embeddings.export`, to skip reading them.
    trainer: a Trainer of the run (reused for the write-back).
    progress, verbose: progress bars; print the table (process 0).

  Returns:
    The report (also WORKDIR/smote/report.json).
  """
  check_config(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  s = config.smote
  if embeddings is None:
    embeddings, meta = emb_lib.load(emb_lib.embeddings_dir(workdir))
  if s.views and not meta.get("views"):
    raise SmoteError(f"smote.views={s.views} but the embeddings in {emb_lib.embeddings_dir(workdir)} have no "
                     "views: export them again with this config.")
  tr, val, test = embeddings["train"], embeddings["val"], embeddings["test"]
  res = resample(tr.features, tr.labels, method=s.method, k_neighbors=s.k_neighbors, ratio=s.ratio,
                 seed=config.seed, progress=progress)
  loss_config = config.loss.copy_and_resolve_references()
  if s.loss:
    loss_config.name = s.loss
  params, mean, std, final_loss = train_head(res.features, res.labels, smote_config=s, loss_config=loss_config,
                                             seed=config.seed, progress=progress)
  # Thresholds on validation, report on test.
  val_scores = head_probs(params, mean, std, val.features)
  test_scores = head_probs(params, mean, std, test.features)
  result = _scores_report(config, val=val, test=test, val_scores=val_scores, test_scores=test_scores)
  backbone = _scores_report(config, val=val, test=test, val_scores=val.backbone_probs,
                            test_scores=test.backbone_probs)
  target = config.data.target
  val_target = metrics_lib.evaluate_scores(labels=val.labels, scores=val_scores, classes=nih.CLASSES,
                                           thresholds=np.full(len(nih.CLASSES), 0.5))["classes"][target]
  step = int(meta["checkpoint_step"])
  report = {
      "split": f"{config.data.split}/test", "checkpoint_step": step, "target": target, "arm": config.arm,
      "threshold_rule": config.train.threshold_rule, "num_images": len(test),
      "stage": "smote", "method": s.method, "k_neighbors": s.k_neighbors, "ratio": s.ratio, "head": s.head,
      "head_loss": loss_config.name, "head_steps": s.steps, "head_final_loss": final_loss,
      "views": int(meta.get("views", 0)),
      "train_rows": int(len(tr)), "train_views": int(tr.is_view.sum()),
      "synthetic_rows": int(res.is_synthetic.sum()), "resampling": res.log,
      **result,
      "backbone": {"checkpoint_step": step, "threshold_rule": config.train.threshold_rule, **backbone},
  }
  if s.head == "linear":
    kernel, bias = fold_linear(params, mean, std)
    ckpt_dir = write_back(config, workdir, step=step, kernel=kernel, bias=bias, val_metric=val_target["auprc"],
                          trainer=trainer)
    report["write_back"] = ckpt_dir
    report["evaluate_command"] = f"python -m jaxcxr.evaluate --workdir={smote_dir(workdir)}"
  else:
    report["write_back"] = None
    report["write_back_note"] = ("an MLP head cannot be written into the model's single Dense head; it is "
                                 "reported on embeddings only (use smote.head='linear' to evaluate on images)")
    logging.warning("smote.head='mlp': %s.", report["write_back_note"])
  if jax.process_index() == 0:
    out = smote_dir(workdir)
    metrics_lib.write_report(report, out, labels=test.labels, scores=test_scores, classes=nih.CLASSES,
                             highlight=target)
    with open(os.path.join(out, "report.md"), "a") as f:
      f.write(_markdown_extra(report))
    if verbose:
      print(f"\nSMOTE head report ({report['split']}, embeddings of checkpoint step {step}, {s.method} "
            f"ratio {s.ratio}, {s.head} head with {loss_config.name}, thresholds by "
            f"{config.train.threshold_rule} on validation) -> {out}")
      print(format_table(report))
  return report


def _with_backbone_row(report):
  target = report["target"]
  classes = {**report["classes"], f"{target} (backbone)": report["backbone"]["classes"][target]}
  return {**report, "classes": classes}


def format_table(report: dict) -> str:
  """metrics.format_table of the SMOTE head with the backbone's own target row beside it."""
  return metrics_lib.format_table(_with_backbone_row(report))


def _markdown_extra(report: dict) -> str:
  target = report["target"]
  head, base = report["classes"][target], report["backbone"]["classes"][target]
  keys = ("auroc", "auprc", "recall", "precision", "f1", "threshold")
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
  lines = ["", f"## {target}: SMOTE head against the backbone's own head", "",
           "| model | " + " | ".join(keys) + " |", "|:--|" + "--:|" * len(keys),
           "| SMOTE head | " + " | ".join(fmt(head[k]) for k in keys) + " |",
           "| backbone | " + " | ".join(fmt(base[k]) for k in keys) + " |", "",
           "## Resampling (training embeddings only)", "",
           "| class | positives | negatives | method | k | synthetic | note |", "|:--|--:|--:|:--|--:|--:|:--|"]
  for e in report["resampling"]:
    lines.append(f"| {e['class']} | {e['n_pos']} | {e['n_neg']} | {e['method']} | {e['k_neighbors']} | "
                 f"{e['synthetic']} | {e.get('note', '')} |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "The training run's folder (holding embeddings/ from "
                      "jaxcxr.export_embeddings, checkpoints/ and config.json).")
  config_flags.DEFINE_config_file(
      "config", None, "The run's config file and arm with its overrides (e.g. configs/demo.py:smote "
      "--config.smote.method=adasyn). Default: WORKDIR/config.json.", lock_config=True)
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  cli.start(argv)
  from jaxcxr import evaluate  # pylint: disable=g-import-not-at-top
  with cli.user_errors("jaxcxr.smote", nih.DataError, SmoteError, emb_lib.EmbeddingsError,
                       evaluate.EvaluationError):
    config = FLAGS.config if FLAGS.config is not None else evaluate.load_workdir_config(FLAGS.workdir)
    config_check.check(config)
    if "smote" not in config:
      raise SmoteError("The config has no smote block; pass --config (e.g. configs/demo.py:smote).")
    run(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main, "jaxcxr.smote")

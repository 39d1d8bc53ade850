"""A model context: a run's model on a device mesh, its checkpoints restored, and prediction. No side effects.

  ctx = ModelContext.from_workdir("/tmp/jaxcxr_demo")     # reads WORKDIR/config.json
  step, variables = ctx.restore("best")                    # 'best', 'latest' or a step
  probs = ctx.predict_split(variables, ctx.splits["test"])  # (N, 14)
  probs = ctx.predict(variables, images)                   # uint8 (N, S, S) or (N, S, S, 1)

It builds no optimiser, loads data only when `splits` is first used, and creates no folder: evaluation,
embedding export, the SMOTE and cRT stages, the study, the benchmark and prediction use it, and the
trainer builds on it. Restoring reads the checkpoint's own tree (whatever optimiser state it holds) and
keeps only the model's variables, after checking their shapes against this config's model.
"""

import functools
from typing import Optional, Union

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from jaxcxr import errors
from jaxcxr import metrics
from jaxcxr import models
from jaxcxr import runfolder
from jaxcxr.data import datasets
from jaxcxr.data import nih
from jaxcxr.data import pipeline

# Fixed normalisation of [0, 1] grey values; chest radiographs average about 0.5.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25
PARALLEL_MODES = ("jit", "shard_map")


class CheckpointError(errors.UserError):
  """A checkpoint cannot be restored into this config's model; the message names the step and why."""


def to_host(tree):
  """Fetches replicated arrays to numpy; in multi-process runs each process reads its local copy."""
  def fetch(x):
    return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))
  return jax.tree.map(fetch, tree)


def compute_dtype(name):
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def normalize(images):
  """uint8 (B, S, S, 1) -> float32, zero-centred."""
  return (images.astype(jnp.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD


def parallel_mode(config):
  """config.parallel.mode, checked; 'jit' for configs saved before the field existed."""
  mode = config.parallel.mode if "parallel" in config else "jit"
  if mode not in PARALLEL_MODES:
    raise errors.ConfigError(f"parallel.mode must be one of {', '.join(PARALLEL_MODES)}, got {mode!r}.")
  return mode


def prior_log_odds(prevalence):
  """Each class's log prior odds, prevalence clipped to [1e-4, 1 - 1e-4] (the head's initial bias)."""
  p = np.clip(np.asarray(prevalence, np.float64), 1e-4, 1 - 1e-4)
  return np.log(p / (1 - p))


def weight_decay_mask(params):
  """True for the parameters weight decay applies to: kernels (ndim > 1), not biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_model(config, *, prevalence=None):
  """The Flax model of `config.model`; `prevalence` (14,) sets the head bias when head_bias='prior'."""
  bias = None
  if config.model.head_bias == "prior" and prevalence is not None:
    bias = tuple(prior_log_odds(prevalence).tolist())
  elif config.model.head_bias not in ("prior", "zero"):
    raise errors.ConfigError(f"model.head_bias must be 'prior' or 'zero', got {config.model.head_bias!r}.")
  if config.model.name not in models.MODELS:
    raise errors.ConfigError(f"model.name must be one of {', '.join(sorted(models.MODELS))}, "
                             f"got {config.model.name!r}.")
  return models.get_model(config.model.name, num_classes=len(nih.CLASSES),
                          dtype=compute_dtype(config.model.dtype), head_bias_init=bias,
                          bn_axis_name="data" if parallel_mode(config) == "shard_map" else None)


def make_mesh(devices=None):
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def predict_step(variables, images, *, model):
  """Per-class probabilities for a global batch of uint8 images, BatchNorm in inference mode."""
  logits, _ = model.apply(variables, normalize(images), train=False)
  return jax.nn.sigmoid(logits.astype(jnp.float32))


def features_step(variables, images, *, model):
  """(pooled features (B, D) float32, probabilities (B, 14)) for a global batch of uint8 images."""
  logits, aux = model.apply(variables, normalize(images), train=False)
  return aux["pre_logits"].astype(jnp.float32), jax.nn.sigmoid(logits.astype(jnp.float32))


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


class ModelContext:
  """A config's model on a mesh of every device, with restore and batched prediction (see module doc)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None, *, devices=None,
               prevalence=None, splits=None):
    self.config = config
    self.workdir = None if workdir is None else runfolder.path(workdir)
    self.mesh = make_mesh(devices)
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.replicated = NamedSharding(self.mesh, P())
    self.model = create_model(config, prevalence=prevalence)
    self._splits = splits
    t, n = config.train, self.mesh.size
    batch = t.eval_batch_size or t.batch_size
    # Evaluation pads its last batch and BatchNorm runs in inference mode, so predictions do not depend
    # on the batch size: round it up to a multiple of the device count.
    self.eval_batch_size = round_up(batch, n)
    if self.eval_batch_size != batch:
      logging.info("Evaluation batch %d -> %d, a multiple of the %d devices.", batch, self.eval_batch_size, n)
    data, replicated = self.data_sharding, self.replicated
    self._predict = jax.jit(functools.partial(predict_step, model=self.model),
                            in_shardings=(replicated, data), out_shardings=replicated)
    self._features = jax.jit(functools.partial(features_step, model=self.model),
                             in_shardings=(replicated, data), out_shardings=(replicated, replicated))

  @classmethod
  def from_workdir(cls, workdir: str, config: Optional[ml_collections.ConfigDict] = None, **kwargs):
    """The context of a trained run: its config.json (or `config`, checked against it) and checkpoints."""
    workdir = runfolder.path(workdir)
    runfolder.require_checkpoints(workdir)
    if config is None:
      config = runfolder.read_config(workdir)
    else:
      runfolder.check_config(config, workdir)
    return cls(config, workdir, **kwargs)

  # Data -------------------------------------------------------------------

  @property
  def splits(self) -> dict:
    """{'train', 'val', 'test'} -> Split of the config's data, loaded on first use."""
    if self._splits is None:
      self._splits = datasets.load_splits(self.config)
    return self._splits

  def global_batch(self, local):
    """Assembles this process's numpy batch into a global array sharded over 'data'."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.data_sharding, x), local)

  # Checkpoints ------------------------------------------------------------

  @functools.cached_property
  def checkpoints(self) -> ocp.CheckpointManager:
    """The run's checkpoint manager, for reading (it never saves)."""
    if self.workdir is None:
      raise runfolder.RunFolderError("This model context has no workdir to restore from.")
    runfolder.require_checkpoints(self.workdir)
    return runfolder.checkpoint_manager(self.workdir)

  def abstract_variables(self):
    """Shapes and dtypes of the model's {'params', 'batch_stats'}, replicated."""
    size = self.config.data.image_size
    shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)),
                                                    train=False))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
                        {"params": shapes["params"], "batch_stats": shapes["batch_stats"]})

  def resolve(self, checkpoint: Union[str, int] = "best") -> int:
    return runfolder.resolve_checkpoint(self.checkpoints, checkpoint)

  def restore(self, checkpoint: Union[str, int] = "best"):
    """(step, {'params', 'batch_stats'}) of `checkpoint` ('best', 'latest' or a step), replicated."""
    step = self.resolve(checkpoint)
    return step, self.restore_step(step)

  def restore_step(self, step: int):
    """The model variables saved at `step`, checked against this config's model."""
    manager = self.checkpoints
    expected = self.abstract_variables()
    try:
      saved = manager.item_metadata(step)["state"]
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), saved)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"Cannot read the checkpoint at step {step} in {manager.directory} "
                            f"({type(e).__name__}: {e}).") from e
    mismatch = _variable_mismatch(expected, {"params": abstract.get("params"),
                                             "batch_stats": abstract.get("batch_stats")})
    if mismatch:
      raise CheckpointError(
          f"The checkpoint at step {step} in {manager.directory} does not fit model.name="
          f"{self.config.model.name!r} at data.image_size={self.config.data.image_size} ({mismatch}); is this "
          "the config the run was trained with?")
    try:
      state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"Cannot restore the checkpoint at step {step} in {manager.directory} "
                            f"({type(e).__name__}: {e}).") from e
    return {"params": state["params"], "batch_stats": state["batch_stats"]}

  # Prediction -------------------------------------------------------------

  def _batches(self, images, labels=None):
    """Local batches of `images` (N, S, S[, 1]) uint8 and how many rows of each are real."""
    n = len(images)
    local = self.eval_batch_size // jax.process_count()
    lo = jax.process_index() * local
    for start in range(0, n, self.eval_batch_size):
      idx = np.arange(start + lo, start + lo + local)
      idx = idx[idx < n]
      batch = np.zeros((local, *images.shape[1:3], 1), np.uint8)
      batch[:len(idx)] = np.asarray(images[idx]).reshape(len(idx), *images.shape[1:3], 1)
      yield batch, min(self.eval_batch_size, n - start)

  def _run(self, fn, variables, batches, *, desc=None, total=None):
    bar = tqdm.tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True,
                    disable=desc is None or jax.process_index() != 0)
    out = []
    for b, v in batches:
      out.append((fn(variables, self.global_batch(b)), v))
      bar.update(v)
    bar.close()
    if not out:
      return None
    return jax.tree.map(lambda *xs: np.concatenate(xs), *[jax.tree.map(lambda a, v=v: to_host(a)[:v], o)
                                                        for o, v in out])

  def predict(self, variables, images) -> np.ndarray:
    """Probabilities (N, 14) for uint8 images (N, S, S) or (N, S, S, 1) at data.image_size."""
    out = self._run(self._predict, variables, self._batches(np.asarray(images)))
    return np.zeros((0, len(nih.CLASSES)), np.float32) if out is None else out

  def predict_split(self, variables, split, *, step_fn=None) -> np.ndarray:
    """Probabilities (N, 14) for every image of `split`, in its order (`step_fn` replaces the jitted
    predict step, e.g. the trainer's shard_map evaluation)."""
    batches = ((local["image"], valid) for local, valid in pipeline.eval_batches(
        split, global_batch=self.eval_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count()))
    out = self._run(step_fn or self._predict, variables, batches)
    return np.zeros((0, len(nih.CLASSES)), np.float32) if out is None else out

  def thresholds(self, variables, *, rule: Optional[str] = None, target_recall: Optional[float] = None):
    """(14,) per-class thresholds chosen on the validation split with `rule` (default the config's
    train.threshold_rule), as every report chooses them: validation chooses, nothing else."""
    val = self.splits["val"]
    t = self.config.train
    return metrics.select_thresholds(labels=val.meta.labels, scores=self.predict_split(variables, val),
                                     rule=t.threshold_rule if rule is None else rule,
                                     target_recall=float(t.target_recall if target_recall is None else target_recall))

  def features_split(self, variables, split=None, *, images=None, desc=None):
    """(features (N, D), probabilities (N, 14)) of every image of `split` (or of `images`), in order;
    `desc` names a progress bar."""
    if images is None:
      batches = ((local["image"], valid) for local, valid in pipeline.eval_batches(
          split, global_batch=self.eval_batch_size, process_index=jax.process_index(),
          process_count=jax.process_count()))
    else:
      batches = self._batches(np.asarray(images))
    total = len(split) if images is None else len(images)
    out = self._run(self._features, variables, batches, desc=desc, total=total)
    if out is None:
      return np.zeros((0, 0), np.float32), np.zeros((0, len(nih.CLASSES)), np.float32)
    return out


def _variable_mismatch(expected, saved) -> str:
  """A short description of how the saved variables differ from the model's ('' when they fit)."""
  if saved["params"] is None or saved["batch_stats"] is None:
    return "no params/batch_stats in it"
  exp = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
  missing = sorted(exp.keys() - got.keys())
  unexpected = sorted(got.keys() - exp.keys())
  shapes = sorted(k for k in exp.keys() & got.keys() if tuple(exp[k]) != tuple(got[k]))
  parts = []
  for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
    if keys:
      parts.append(f"{len(keys)} {what}, e.g. {keys[0]}")
  return "; ".join(parts)

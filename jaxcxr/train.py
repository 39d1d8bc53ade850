"""The trainer, top to bottom: mesh -> data -> model -> shard -> step -> checkpoint -> loop (no later stages).

One jitted `train_step` runs data-parallel over every device: the batch is sharded along the mesh axis
'data', the train state is replicated, and XLA inserts the gradient all-reduce (and computes BatchNorm
statistics over the global batch). With parallel.mode='shard_map' the same `train_step` runs per device
under `jax.shard_map` instead, with explicit collectives (see `shard_map_steps`). What follows training (the
test report, embeddings, new heads) is composed in experiment.py from the model context `train` returns.
"""

import functools
import os
import signal
import threading
from typing import Any

from absl import logging
from flax.training import train_state
import grain
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from jaxcxr import errors
from jaxcxr import losses
from jaxcxr import metrics as metrics_lib
from jaxcxr import model_context
from jaxcxr import runfolder
from jaxcxr import writers
from jaxcxr.data import augment
from jaxcxr.data import datasets
from jaxcxr.data import nih
from jaxcxr.data import pipeline
from jaxcxr.models import weights



class NonFiniteLossError(errors.UserError, RuntimeError):
  """The loss, a gradient or a parameter became NaN or infinite; the message names the step and the last
  good checkpoint (or says that none was written yet)."""


class TrainState(train_state.TrainState):
  batch_stats: Any


def _plateau_scale(config):
  """The learning-rate scale of reduce-on-plateau, fed the validation loss at each evaluation.

  The state is optax's `reduce_on_plateau` state, kept inside the optimiser state (so it is checkpointed
  and restored with it). A training step only multiplies its updates by the current scale; the plateau
  logic runs in `observe_validation_loss`, once per evaluation, as CheXNet's per-epoch decay did.
  """
  t = config.train
  plateau = optax.contrib.reduce_on_plateau(factor=t.plateau_factor, patience=t.plateau_patience,
                                            rtol=t.plateau_rtol, cooldown=0, min_scale=t.plateau_min_scale)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: state.scale * u, updates), state

  return optax.GradientTransformation(plateau.init, update), plateau


def create_optimizer(config):
  """The optimiser of `config.train` and its step -> learning-rate schedule (before any plateau scale).

  'adamw': AdamW, decoupled weight decay on kernels only. 'adam': Adam, plus the same decoupled decay
  only when `weight_decay` > 0 (CheXNet used none). Schedules: 'warmup_cosine' (linear warm-up, cosine decay to zero) or 'plateau'
  (linear warm-up, then constant, multiplied by `plateau_factor` whenever the validation loss stops
  improving for `plateau_patience` evaluations).
  """
  t = config.train
  warmup = min(t.warmup_steps, t.num_steps)
  if t.schedule == "warmup_cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.learning_rate, warmup_steps=warmup,
        decay_steps=max(t.num_steps, t.warmup_steps + 1), end_value=0.0)
  elif t.schedule == "plateau":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, t.learning_rate, warmup) if warmup else optax.constant_schedule(0.0),
         optax.constant_schedule(t.learning_rate)], boundaries=[warmup])
  else:
    raise ValueError(f"train.schedule must be 'warmup_cosine' or 'plateau', got {t.schedule!r}.")
  decay_mask = model_context.weight_decay_mask
  if t.optimizer == "adamw":
    tx = optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask)
  elif t.optimizer == "adam":
    tx = optax.adam(schedule, b1=t.b1, b2=t.b2)
    if t.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(t.weight_decay, mask=decay_mask), tx)
  else:
    raise ValueError(f"train.optimizer must be 'adamw' or 'adam', got {t.optimizer!r}.")
  if t.schedule == "plateau":
    tx = optax.chain(tx, _plateau_scale(config)[0])
  return tx, schedule


def _is_plateau(x):
  return isinstance(x, optax.contrib.ReduceLROnPlateauState)


def _plateau_states(opt_state):
  """The reduce-on-plateau states inside an optimiser state (empty unless train.schedule='plateau')."""
  return [s for s in jax.tree.leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(s)]


def learning_rate_scale(state):
  """The plateau scale of the learning rate (1.0 without the plateau schedule), a device scalar."""
  found = _plateau_states(state.opt_state)
  return found[0].scale if found else jnp.ones((), jnp.float32)


def observe_validation_loss(config, state, val_loss):
  """Feeds one validation loss to the plateau logic; returns the state with the updated scale."""
  _, plateau = _plateau_scale(config)

  def observe(s):
    return plateau.update((), s, value=val_loss)[1] if _is_plateau(s) else s

  return state.replace(opt_state=jax.tree.map(observe, state.opt_state, is_leaf=_is_plateau))


def create_train_state(config, model, rng, image_size):
  tx, _ = create_optimizer(config)
  variables = model.init(rng, jnp.zeros((1, image_size, image_size, 1), jnp.float32), train=False)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables["batch_stats"])
  # A strongly typed step, so restored and fresh states share one compiled step.
  return state.replace(step=jnp.zeros((), jnp.int32))


def train_step(state, batch, *, loss_fn, augment_fn=None, augment_seed=0):
  """One optimiser step on a (sharded) global batch; returns the new state and scalar metrics.

  `augment_fn(key, images, labels)` (data/augment.py), if given, augments the uint8 images first. Each
  image's key is `augment_seed` folded with its offset in the training stream (`batch['position']`), so a
  resumed run augments like an uninterrupted one and any device or process layout like any other; a batch
  without positions (benchmarks) uses one key folded with the state's step.
  """
  images = batch["image"]
  if augment_fn is not None:
    base = jax.random.key(augment_seed)
    if "position" in batch:
      key = jax.vmap(lambda p: jax.random.fold_in(base, p))(batch["position"])
    else:
      key = jax.random.fold_in(base, state.step)
    images = augment_fn(key, images, batch["labels"])
  images = model_context.normalize(images)

  def compute_loss(params):
    (logits, _), updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                          train=True, mutable=["batch_stats"])
    return loss_fn(logits, batch["labels"], state.step).mean(), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  # The norms are finite only if every gradient and every new parameter is: the loop checks them (with
  # the loss) before any checkpoint is written, so a non-finite state is never saved.
  return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(state.params)}


def jit_steps(mesh, loss_fn, model, *, augment_fn=None, augment_seed=0):
  """The jitted (train_step, eval_step): batch sharded over 'data', state replicated and donated.
  Only the train step augments (with `augment_fn`, if given); the eval step (variables, images) never does."""
  data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  step = functools.partial(train_step, loss_fn=loss_fn, augment_fn=augment_fn, augment_seed=augment_seed)
  train = jax.jit(step, in_shardings=(replicated, data),
                  out_shardings=(replicated, replicated), donate_argnums=0)
  evaluate = jax.jit(functools.partial(model_context.predict_step, model=model), in_shardings=(replicated, data),
                     out_shardings=replicated)
  return train, evaluate


def shard_map_steps(mesh, loss_fn, model, *, augment_fn=None, augment_seed=0):
  """The (train_step, eval_step) of parallel.mode='shard_map': explicit per-device programs.

  Each device runs `train_step` on its shard of the batch with the replicated state. The gradients are
  averaged with `jax.lax.pmean` over 'data' just before the optimiser sees them (by wrapping the state's
  optimiser for the duration of the step, so `train_step` itself is shared with the jit mode), the
  metrics are pmean'd too, and BatchNorm averages its statistics over 'data' (the model is built with
  `bn_axis_name='data'`, see `model_context.create_model`). Every shard holds batch_size / devices images,
  so the mean of per-device means is the global mean and the step equals the jit mode's up to float
  rounding. `check_vma=False` gives pmap's semantics: gradients of the replicated parameters are
  per-device until the explicit pmean. The state stays replicated and is donated; eval gathers the
  probabilities. Augmentation (train step only) keys each image by its stream position as in the jit
  mode (a batch without positions folds the device's index into the step's key, so shards draw apart).
  """
  data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

  def per_device_augment(key, images, labels):
    if jnp.ndim(key):  # Per-image keys from stream positions: already distinct on every device.
      return augment_fn(key, images, labels)
    return augment_fn(jax.random.fold_in(key, jax.lax.axis_index("data")), images, labels)

  def per_device_train(state, batch):
    tx, synced = state.tx, {}

    def update(grads, opt_state, params=None, **extra):
      grads, extra = jax.lax.pmean((grads, extra), "data")
      synced["grad_norm"] = optax.tree.norm(grads)
      return tx.update(grads, opt_state, params, **extra)

    state, metrics = train_step(state.replace(tx=optax.GradientTransformationExtraArgs(tx.init, update)),
                                batch, loss_fn=loss_fn,
                                augment_fn=per_device_augment if augment_fn is not None else None,
                                augment_seed=augment_seed)
    metrics = jax.lax.pmean(metrics, "data")
    # The norm of the averaged gradients (traced in this same step), not the mean of per-device norms.
    metrics["grad_norm"] = synced["grad_norm"]
    metrics["param_norm"] = optax.tree.norm(state.params)
    return state.replace(tx=tx), metrics

  def per_device_eval(variables, images):
    return jax.lax.all_gather(model_context.predict_step(variables, images, model=model), "data", tiled=True)

  shard = functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("data")), check_vma=False)
  train = jax.jit(shard(per_device_train, out_specs=(P(), P())), in_shardings=(replicated, data),
                  out_shardings=(replicated, replicated), donate_argnums=0)
  evaluate = jax.jit(shard(per_device_eval, out_specs=P()), in_shardings=(replicated, data),
                     out_shardings=replicated)
  return train, evaluate


PARALLEL_MODES = {"jit": jit_steps, "shard_map": shard_map_steps}


def variables_of(state):
  """The model variables {'params', 'batch_stats'} of a train state."""
  return {"params": state.params, "batch_stats": state.batch_stats}


class Trainer:
  """Holds what the loop needs: a model context (mesh, model, prediction), optimiser, steps, checkpoints."""

  def __init__(self, config: ml_collections.ConfigDict, *, num_pos, num_total: int, workdir=None, splits=None,
               devices=None):
    """`num_pos` (14,) and `num_total`: the training split's positives per class and images (the loss
    weights and the head's prior bias come from them); `workdir` and `splits` go to the model context."""
    self.config = config
    t = config.train
    n = len(jax.devices() if devices is None else devices)
    for name, b in (("train.batch_size", t.batch_size), ("train.eval_batch_size", t.eval_batch_size or t.batch_size)):
      if b % n:
        raise errors.ConfigError(f"{name}={b} does not divide by the {n} devices; use a multiple of {n}.")
    self.num_pos = np.asarray(num_pos, np.int64)
    self.prevalence = self.num_pos / max(num_total, 1)

    # Model (with its mesh and prediction), loss, optimiser, replicated state.
    self.ctx = model_context.ModelContext(config, workdir, devices=devices, prevalence=self.prevalence,
                                          splits=splits)
    self.mesh, self.replicated, self.model = self.ctx.mesh, self.ctx.replicated, self.ctx.model
    loss_fn = losses.get_loss_fn(config.loss, num_pos=self.num_pos, num_total=num_total,
                                 num_steps=config.train.num_steps)
    _, self.schedule = create_optimizer(config)
    init = jax.jit(functools.partial(create_train_state, config, self.model, image_size=config.data.image_size),
                   out_shardings=self.replicated)
    # The 'rbg' generator compiles in a fraction of threefry's time on CPU; init runs replicated anyway.
    self.state = init(jax.random.key(config.seed, impl="rbg"))
    if config.model.init_from:
      self.state = self._import_pretrained(config.model.init_from)

    # The two jitted steps, each compiled once.
    self.augment_fn = augment.make_augment_fn(config)
    self.train_step, self.eval_step = PARALLEL_MODES[model_context.parallel_mode(config)](
        self.mesh, loss_fn, self.model, augment_fn=self.augment_fn, augment_seed=config.seed)
    # Reduce-on-plateau bookkeeping (train.schedule='plateau'), fed each validation loss.
    self.observe_validation_loss = jax.jit(functools.partial(observe_validation_loss, config),
                                           out_shardings=self.replicated, donate_argnums=0)
    self.learning_rate_scale = jax.jit(learning_rate_scale)

  def _import_pretrained(self, path):
    """Loads ImageNet trunk weights into the fresh state; the head and the optimiser state stay fresh."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise nih.DataError(f"model.init_from: {path} not found. Give a local .safetensors file of ImageNet "
                          "weights (see README, 'Starting from ImageNet weights').")
    params, batch_stats = weights.import_pretrained(
        path, model_name=self.config.model.name, params=model_context.to_host(self.state.params),
        batch_stats=model_context.to_host(self.state.batch_stats))
    logging.info("model.init_from: the %s trunk (parameters and BatchNorm statistics) comes from %s; the "
                 "head and the optimiser state start fresh.", self.config.model.name, path)
    # Adam's moments are zeros of the parameters' shapes, so the fresh optimiser state still fits.
    return jax.device_put(self.state.replace(params=params, batch_stats=batch_stats), self.replicated)

  def predict(self, state, split):
    """Probabilities (N, 14) for every image of `split`, in its order (the parallel mode's eval step)."""
    return self.ctx.predict_split(variables_of(state), split, step_fn=self.eval_step)

  def validate(self, state):
    """Validation metrics at threshold-free level (AUROC/AUPRC) for logging and checkpoint ranking."""
    split = self.ctx.splits["val"]
    probs = self.predict(state, split)
    labels = split.meta.labels
    res = metrics_lib.evaluate_scores(labels=labels, scores=probs, classes=nih.CLASSES,
                                      thresholds=np.full(len(nih.CLASSES), 0.5))
    tgt = res["classes"][self.config.data.target]
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    val_loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p))  # Plain BCE, every class.
    # The target's AUPRC never stands in for the macro one or the reverse; RANK_KEY names the one that ranks.
    return {"val_target_auprc": tgt["auprc"], "val_target_auroc": tgt["auroc"],
            "val_macro_auroc": res["macro"]["auroc"], "val_macro_auprc": res["macro"]["auprc"],
            "val_loss": float(val_loss), runfolder.RANK_KEY: runfolder.rank_metric(self.config)}

  def checkpoint_args(self, state, data_iter):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter))

  def restore(self, manager, step, data_iter=None):
    """The train state (and the data iterator's position) saved at `step` in `manager`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self.state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def _log_start(config):
  logging.info("JAX %s on %s: %d process(es), %d device(s) in all, %d local: %s", jax.__version__,
               jax.default_backend(), jax.process_count(), jax.device_count(), jax.local_device_count(),
               jax.local_devices())
  logging.info("Config:\n%s", config)


_NAMES = {"loss": "the loss", "grad_norm": "the gradient norm", "param_norm": "the parameter norm"}


def non_finite_message(step, values, last_checkpoint, directory) -> str:
  """The one line that stops a run whose loss, gradients or parameters went non-finite at `step`."""
  what = ", ".join(f"{_NAMES[k]} is {v}" for k, v in values.items())
  where = (f"The last good checkpoint (step {last_checkpoint}) in {directory} is intact; nothing non-finite "
           "was saved." if last_checkpoint is not None else
           f"No checkpoint had been written yet: nothing was saved in {directory}.")
  return (f"At step {step} {what}; training stopped before saving. {where} Try a lower train.learning_rate "
          "or a smaller loss.pos_weight_max.")


def check_validation(config, splits) -> dict:
  """Logs what each split holds of the target; with train.rank_by='target', a validation split without a
  target positive stops the run here, before any training (checkpoints could not be ranked by it)."""
  described = nih.describe_split({k: v.meta for k, v in splits.items()}, target=config.data.target)
  for name, d in described.items():
    logging.info("%s: %d images, %d patients, %d %s images from %d patients.", name, d["images"], d["patients"],
                 d["target_images"], config.data.target, d["target_patients"])
  if runfolder.rank_metric(config) == runfolder.RANK_METRICS["target"] and not described["val"]["target_images"]:
    raise errors.ConfigError(
        f"The validation split holds no {config.data.target} image, so checkpoints cannot be ranked by its "
        f"validation AUPRC. Use a larger data.val_fraction or another data.split_seed, or rank by the macro "
        "AUPRC with --config.train.rank_by=macro.")
  return described


def load_data(config):
  """The splits of `config.data`: process 0 generates or prepares them once, the others wait, then read."""
  if jax.process_index() == 0:
    splits = datasets.load_splits(config)
  runfolder.wait_for_all("jaxcxr_data_ready", timeout_s=4 * 3600)
  if jax.process_index() != 0:
    splits = datasets.load_splits(config)
  return splits


class _StopRequest:
  """SIGTERM (sent by SLURM, Kubernetes and Cloud TPU before preempting a job) or a first Ctrl-C asks the
  loop to save a checkpoint at the current step and stop; a second Ctrl-C stops at once. With several
  processes JAX's preemption sync point picks one step for all (jax.distributed handles SIGTERM there)."""

  def __init__(self):
    self.signal = None
    self._previous = {}
    self._handled = ()
    if threading.current_thread() is threading.main_thread():
      self._handled = (signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGTERM, signal.SIGINT)
      for sig in self._handled:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # The second Ctrl-C: stop now.
    self.signal = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint at the current step, then stopping (Ctrl-C again to "
                    "stop at once).", self.signal)

  def reached(self, ckpt, step) -> bool:
    if jax.process_count() > 1 and ckpt.reached_preemption(step):
      self.signal = self.signal or "preemption notice"
      return True
    return self.signal is not None and jax.process_count() == 1

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def resume(trainer, ckpt, data_iter, workdir):
  """(start step, state): from the newest checkpoint that restores. One that does not (a truncated or
  missing file, a disk fault) is moved aside into checkpoints/corrupt/ with a warning naming its step, and
  the next older one is tried; with none left, training starts from scratch only if none was ever readable."""
  bad = []
  while True:
    step = ckpt.latest_step()
    if not step:
      if bad:
        raise runfolder.RunFolderError(
            f"No checkpoint in {ckpt.directory} restores (steps {', '.join(map(str, bad))} moved aside to "
            f"{os.path.join(ckpt.directory, runfolder.CORRUPT)}); rerun to start over, or use a new --workdir.")
      return 0, trainer.state
    try:
      state = trainer.restore(ckpt, step, data_iter)
      logging.info("Resuming from the checkpoint at step %d in %s.", step, ckpt.directory)
      return step, state
    except Exception as e:  # pylint: disable=broad-except  (any failure to read it means: not usable)
      bad.append(step)
      runfolder.quarantine(workdir, step, e)
      runfolder.wait_for_all(f"jaxcxr_quarantine_{step}", timeout_s=600)
      ckpt.reload()


def train(config: ml_collections.ConfigDict, workdir: str, *, splits=None) -> model_context.ModelContext:
  """Trains (resuming from the latest checkpoint in `workdir` if any); returns the run's model context.

  The context holds the mesh, the model, the loaded splits and the run's checkpoints, so the stages that
  follow (the test report, embeddings, heads) restore and predict without loading anything again.

  Raises:
    errors.Preempted: a stop was requested (SIGTERM, Ctrl-C); a checkpoint at the current step was saved.
    NonFiniteLossError: the loss, a gradient or a parameter became non-finite (nothing non-finite saved).
    runfolder.RunFolderError: the workdir holds a run with another config, or no checkpoint restores.
  """
  workdir = runfolder.path(workdir)
  if runfolder.has_checkpoints(workdir):  # A rerun: the same run, or say what changed.
    runfolder.check_resume(config, workdir)
  # Data first, so that missing data fails before anything else.
  splits = load_data(config) if splits is None else splits
  os.makedirs(workdir, exist_ok=True)
  _log_start(config)
  check_validation(config, splits)
  runfolder.write_config(config, workdir)
  t = config.train
  train_labels = splits["train"].meta.labels
  trainer = Trainer(config, num_pos=train_labels.sum(0), num_total=len(train_labels), workdir=workdir,
                    splits=splits)
  # Checkpoints: the latest few plus the best by the target class's validation AUPRC.
  ckpt = runfolder.checkpoint_manager(workdir, keep=t.keep_checkpoints, create=True)
  data_iter = pipeline.train_iterator(splits["train"], global_batch=t.batch_size, seed=config.seed,
                                      process_index=jax.process_index(), process_count=jax.process_count(),
                                      num_workers=config.data.num_workers,
                                      sampling=config.data.get("sampling"), target=config.data.target)
  start, state = resume(trainer, ckpt, data_iter, workdir)
  writer = writers.MetricWriter(workdir, resume_step=start)
  is_main = jax.process_index() == 0
  bar = tqdm.tqdm(total=t.num_steps, initial=start, desc="train", unit="step", disable=not is_main,
                  dynamic_ncols=True)
  pending = []  # Device-side step metrics not yet fetched to the host.

  def flush(step):
    """Fetches pending metrics, stops on a non-finite loss, gradient or parameter, logs means."""
    if not pending:
      return
    fetched = model_context.to_host([m for _, m in pending])
    lr_scale = float(model_context.to_host(trainer.learning_rate_scale(state)))
    losses_ = np.asarray([m["loss"] for m in fetched])
    for i, m in enumerate(fetched):
      bad = [k for k in ("loss", "grad_norm", "param_norm") if k in m and not np.isfinite(m[k])]
      if bad:
        ckpt.wait_until_finished()
        raise NonFiniteLossError(non_finite_message(pending[i][0], {k: float(m[k]) for k in bad},
                                                    ckpt.latest_step(), ckpt.directory))
    scalars = {"train_loss": float(losses_.mean()),
               "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
               "learning_rate": float(trainer.schedule(step)) * lr_scale}
    bar.update(len(pending))  # Counted when computed, not when dispatched, so steps/s and ETA are honest.
    pending.clear()
    writer.write(step, scalars)
    bar.set_postfix(loss=f"{scalars['train_loss']:.4f}")

  stop = _StopRequest()
  stopped_at = None
  try:
    # One batch ahead on the device: batch k + 1 is read and sent while step k runs. On steps that save the
    # data iterator's position it is read after the save, so a resumed run sees the same batches.
    batch = trainer.ctx.global_batch(next(data_iter)) if start < t.num_steps else None
    for step in range(start + 1, t.num_steps + 1):
      state, step_metrics = trainer.train_step(state, batch)
      pending.append((step, step_metrics))
      last = step == t.num_steps
      preempted = not last and stop.reached(ckpt, step)
      saves = last or preempted or step % t.eval_every == 0 or step % t.checkpoint_every == 0
      if not saves:
        batch = trainer.ctx.global_batch(next(data_iter))
      if step % t.log_every == 0 or last or preempted:
        flush(step)
      ckpt_metrics = None
      if step % t.eval_every == 0 or last:
        flush(step)
        ckpt_metrics = trainer.validate(state)
        if t.schedule == "plateau":
          state = trainer.observe_validation_loss(state, ckpt_metrics["val_loss"])
        writer.write(step, {k: v for k, v in ckpt_metrics.items() if k != runfolder.RANK_KEY})
        logging.info("step %d: %s", step, ckpt_metrics)
      if ckpt_metrics is not None or step % t.checkpoint_every == 0 or preempted:
        flush(step)
        ckpt.save(step, args=trainer.checkpoint_args(state, data_iter), metrics=ckpt_metrics,
                  force=preempted)
      if preempted:
        stopped_at = step
        break
      if saves and not last:
        batch = trainer.ctx.global_batch(next(data_iter))
  finally:  # Every pending save is complete before any exit, an error's or a signal's too.
    ckpt.wait_until_finished()
    stop.restore()
  bar.close()
  if hasattr(data_iter, "close"):  # Stops Grain's workers and frees their read-ahead now, not at exit.
    data_iter.close()
  writer.close()
  ckpt.close()
  if stopped_at is not None:
    raise errors.Preempted(
        f"Stopped by {stop.signal} at step {stopped_at} of {t.num_steps}; the checkpoint of that step is "
        f"saved in {ckpt.directory}. Rerun the same command to resume from it (exit code "
        f"{errors.Preempted.exit_code} means: stopped on request, resumable).")
  return trainer.ctx

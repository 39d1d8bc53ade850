"""A new classification head on a run's embeddings: initialise, train with optax, predict, fold into the model.

Used by the stages that replace a trained backbone's head (head_stages.py: SMOTE-resampled features,
class-balanced re-training). Features are standardised with their mean and deviation; a linear head's
standardisation folds into its kernel and bias so that it can replace the model's own Dense head.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jaxcxr import errors
from jaxcxr import losses
from jaxcxr import model_context

HEADS = ("linear", "mlp")


class HeadError(errors.UserError):
  """The head cannot be trained as configured; the message says what to change."""


def init_head(kind: str, *, dim: int, num_classes: int, hidden: int, prior, seed: int) -> dict:
  """Parameters of a linear head (zero kernel) or an MLP (He-initialised hidden layer); the output bias
  starts at the log prior odds of `prior` (num_classes,), or at zero when `prior` is None."""
  bias = (jnp.zeros((num_classes,), jnp.float32) if prior is None
          else jnp.asarray(model_context.prior_log_odds(prior), jnp.float32))
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


def _train_chunk(params, opt_state, features, labels, mean, std, key, first, probs, *, tx, loss_fn, steps,
                 batch_size):
  """`steps` optimiser steps from step `first`; each draws `batch_size` rows of the device arrays features
  (N, D) and labels (N, C) with replacement (key folded with the step number), uniformly when `probs` is
  None, else with the row probabilities `probs` (N,), and standardises them with mean / std. Returns the
  mean loss per step too."""
  def step(carry, i):
    params, opt_state = carry
    k = jax.random.fold_in(key, i)
    if probs is None:
      idx = jax.random.randint(k, (batch_size,), 0, features.shape[0])
    else:
      idx = jax.random.choice(k, features.shape[0], (batch_size,), p=probs)
    x = (features[idx] - mean) / std
    y = labels[idx]
    def loss(p):
      return loss_fn(apply_head(p, x), y, i).mean()
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


def train_head(features, labels, *, head_config, loss_config, seed: int, sample_weights=None,
               progress: bool = True, chunk: int = 100):
  """Trains a head on training rows; returns (params, mean, std, final loss).

  Features are standardised with `mean`/`std` (of the rows given). The rows are put on the device once;
  each step draws its batch there with replacement from a key of `seed` (uniformly, or in proportion to
  `sample_weights` (N,), e.g. class-balanced sampling), inside the jitted scan over `chunk` steps, so no
  batch is copied from the host and the result depends only on the seed. `head_config` gives head,
  hidden, steps, learning_rate, batch_size and weight_decay (the `smote` or `crt` config block).
  """
  s = head_config
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels, np.float32)
  n, dim = features.shape
  mean, std = feature_moments(features)
  num_pos = labels.sum(0)
  loss_fn = losses.get_loss_fn(loss_config, num_pos=num_pos, num_total=n, num_steps=s.steps)
  # As for the backbone's :logit_adjusted arm (model.head_bias='zero'): that loss adds the log prior odds
  # itself, so a prior bias would count the prior twice.
  prior = None if loss_config.name == "logit_adjusted" else num_pos / n
  params = init_head(s.head, dim=dim, num_classes=labels.shape[1], hidden=s.get("hidden", 0), prior=prior,
                     seed=seed)
  schedule = optax.cosine_decay_schedule(s.learning_rate, s.steps)
  tx = optax.adamw(schedule, weight_decay=s.weight_decay, mask=model_context.weight_decay_mask)
  opt_state = tx.init(params)
  run = jax.jit(functools.partial(_train_chunk, tx=tx, loss_fn=loss_fn, batch_size=s.batch_size),
                static_argnames=("steps",), donate_argnums=(0, 1))
  probs = None
  if sample_weights is not None:
    w = np.asarray(sample_weights, np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
      raise HeadError(f"sample_weights must be {n} finite non-negative numbers with a positive sum.")
    probs = jax.device_put((w / w.sum()).astype(np.float32))
  on_device = jax.device_put((features, labels, mean, std))
  key = jax.random.fold_in(jax.random.key(seed), 1)  # init_head's MLP uses key(seed) itself.
  done, last = 0, float("nan")
  bar = tqdm.tqdm(total=s.steps, desc=f"train {s.head} head", unit="step",
                  disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
  while done < s.steps:
    m = min(chunk, s.steps - done)
    params, opt_state, values = run(params, opt_state, *on_device, key, done, probs, steps=m)
    done += m
    bar.update(m)
    last = float(values[-1])
    if not math.isfinite(last):
      raise HeadError(f"The head's loss is {last} near step {done}; lower smote.learning_rate.")
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

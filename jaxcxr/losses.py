"""Multi-label classification losses on logits, and class weights from label counts.

Every loss takes `logits` and `labels` of shape (B, C) (labels in [0, 1], hard or
soft) and returns the ELEMENTWISE loss of the same shape; reduction (mean over the
batch, sum over classes, masking, ...) is the caller's business.

All losses are computed in log space: log σ(x) = -softplus(-x) and
log(1 - σ(x)) = log σ(-x) = -softplus(x), so they stay finite, with finite
gradients, for logits of any magnitude.

Notation used in the docstrings: p = σ(x), y the label, and for a hard label
p_t = p if y = 1 else 1 - p.

The weight helpers are plain NumPy: they turn per-class positive counts of the
training set into per-class weights (and margins, and log prior odds) once,
before training, and the resulting arrays are closed over by the loss function
returned by `get_loss_fn`.

The training step reaches the loss as a third argument: `get_loss_fn` returns
`loss_fn(logits, labels, step)` for every loss, where `step` is the optimiser
step as a scalar integer array (the train state's `step` in
`train.train_step`, the head's step in `smote.train_head`'s scan). Only
'ldam' uses it (deferred re-weighting switches on at a step); the others
ignore it.
"""

from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

ArrayLike = Union[jax.Array, np.ndarray, float, Sequence[float]]
LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

LOSS_NAMES = ("bce", "weighted_bce", "focal", "class_balanced", "asl", "ldam", "logit_adjusted")
POS_WEIGHT_METHODS = ("inverse", "sqrt_inverse", "effective")


# ----------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------


def bce(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Binary cross-entropy per element: -[y log p + (1 - y) log(1 - p)].

  Args:
    logits: (B, C) floating logits.
    labels: (B, C) targets in [0, 1] (hard or soft).

  Returns:
    (B, C) elementwise loss.
  """
  return optax.losses.sigmoid_binary_cross_entropy(logits, labels)


def weighted_bce(
    *, logits: jax.Array, labels: jax.Array, pos_weight: ArrayLike
) -> jax.Array:
  """Binary cross-entropy with the positive term re-weighted per class.

  loss = -[w_c y log p + (1 - y) log(1 - p)]

  This is the `pos_weight` of `torch.nn.BCEWithLogitsLoss`: w_c > 1 makes a
  missed positive of class c cost more, as if each positive were repeated w_c
  times. With w_c = 1 it is `bce`.

  Args:
    logits: (B, C) floating logits.
    labels: (B, C) targets in [0, 1].
    pos_weight: scalar or (C,) weight of the positive term.

  Returns:
    (B, C) elementwise loss.
  """
  labels = jnp.asarray(labels, logits.dtype)
  pos_weight = jnp.asarray(pos_weight, logits.dtype)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  return -(pos_weight * labels * log_p + (1.0 - labels) * log_not_p)


def focal(
    *,
    logits: jax.Array,
    labels: jax.Array,
    alpha: Optional[ArrayLike] = None,
    gamma: float = 2.0,
) -> jax.Array:
  """Sigmoid focal loss (Lin et al. 2017): -α_t (1 - p_t)^γ log p_t.

  α_t = α y + (1 - α)(1 - y). For soft labels, 1 - p_t = y (1 - p) + (1 - y) p
  and -log p_t is replaced by the cross-entropy -[y log p + (1 - y) log(1 - p)]
  (both reduce to the formula above for hard labels); this is optax's
  `sigmoid_focal_loss`, which computes (1 - p_t)^γ in log space.

  Args:
    logits: (B, C) floating logits.
    labels: (B, C) targets in [0, 1].
    alpha: None (no α weighting), a scalar, or a (C,) per-class α in (0, 1):
      the weight of positives, negatives getting 1 - α.
    gamma: focusing exponent γ >= 0; γ = 0 with alpha None is `bce`.

  Returns:
    (B, C) elementwise loss.
  """
  if alpha is not None:
    alpha = jnp.asarray(alpha, logits.dtype)
  return optax.losses.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)


def class_balanced(
    *,
    logits: jax.Array,
    labels: jax.Array,
    pos_weight: ArrayLike,
    neg_weight: ArrayLike,
    gamma: float = 0.0,
) -> jax.Array:
  """Class-balanced (focal) loss with separate weights on positive and negative terms.

  loss = -[w⁺_c y (1 - p)^γ log p + w⁻_c (1 - y) p^γ log(1 - p)]

  Cui et al. 2019 weight each class of a single-label problem by the inverse of
  its effective number of samples. In the multi-label setting every class c is
  its own binary problem whose two "classes" are its positives and its
  negatives, so each gets its own weight (see `effective_number_weights`):
  w⁺_c for the positive term and w⁻_c for the negative term.

  The focal factor modulates each term by the probability of the wrong answer
  for that term: (1 - p)^γ on the positive term, p^γ on the negative one. For
  hard labels this equals w_t · FL_γ with w_t = w⁺ y + w⁻ (1 - y); for γ = 0 and
  w⁻ = 1 it is `weighted_bce`. The modulating factors are computed in log space
  (exp(γ log σ(±x))) so they are stable for any logits.

  Args:
    logits: (B, C) floating logits.
    labels: (B, C) targets in [0, 1].
    pos_weight: scalar or (C,) weight w⁺ of the positive term.
    neg_weight: scalar or (C,) weight w⁻ of the negative term.
    gamma: focusing exponent γ >= 0 (0 = no focal modulation).

  Returns:
    (B, C) elementwise loss.
  """
  labels = jnp.asarray(labels, logits.dtype)
  pos_weight = jnp.asarray(pos_weight, logits.dtype)
  neg_weight = jnp.asarray(neg_weight, logits.dtype)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  pos_term = labels * log_p
  neg_term = (1.0 - labels) * log_not_p
  if not (isinstance(gamma, (int, float)) and gamma == 0):
    pos_term = jnp.exp(gamma * log_not_p) * pos_term
    neg_term = jnp.exp(gamma * log_p) * neg_term
  return -(pos_weight * pos_term + neg_weight * neg_term)


def asl(
    *,
    logits: jax.Array,
    labels: jax.Array,
    gamma_pos: float = 1.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
) -> jax.Array:
  """Asymmetric loss (Ridnik et al. 2021) per element.

  loss = -[y (1 - p)^γ⁺ log p + (1 - y) p_m^γ⁻ log(1 - p_m)],  p_m = max(p - clip, 0).

  The negative term is focused harder (γ⁻ > γ⁺) and easy negatives, those with
  p <= clip, are discarded entirely (probability shifting). Soft labels weight
  the two terms by y and 1 - y.

  Stable form. log p = log σ(x) and (1 - p)^γ⁺ = exp(γ⁺ log σ(-x)) as in
  `class_balanced`. For the negatives, 1 - p_m = min(1 - p + clip, 1) =
  min(σ(-x) + clip, 1), so

    log(1 - p_m) = min(logaddexp(log σ(-x), log clip), 0),

  which is finite for every x (>= log clip) and accurate in float32 even where
  σ(-x) underflows (x -> +inf: log clip). With clip = 0 it is log σ(-x). p_m
  itself is σ(x) - clip where positive (only its absolute error matters: it is
  raised to γ⁻ and multiplies a bounded log), and its power is taken only
  where p_m > 0, so the gradient is finite for any γ⁻ >= 0 (zero where p <= clip).

  Args:
    logits: (B, C) floating logits.
    labels: (B, C) targets in [0, 1].
    gamma_pos: focusing exponent γ⁺ >= 0 of the positive term.
    gamma_neg: focusing exponent γ⁻ >= 0 of the negative term.
    clip: probability margin in [0, 1) subtracted from p in the negative term
      (a Python float: 0 switches the shift off).

  Returns:
    (B, C) elementwise loss.
  """
  clip = float(clip)
  if not 0.0 <= clip < 1.0:
    raise ValueError(f"asl clip must be in [0, 1), got {clip}.")
  labels = jnp.asarray(labels, logits.dtype)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  pos_term = jnp.exp(gamma_pos * log_not_p) * log_p
  if clip > 0:
    log_not_pm = jnp.minimum(jnp.logaddexp(log_not_p, jnp.log(jnp.asarray(clip, logits.dtype))), 0.0)
    p_m = jax.nn.sigmoid(logits) - clip
    positive = p_m > 0
    safe = jnp.where(positive, p_m, 1.0)  # No log(0) (nor its gradient) where the term is discarded.
    weight = jnp.where(positive, jnp.exp(gamma_neg * jnp.log(safe)), 0.0)
  else:
    log_not_pm = log_not_p
    weight = jnp.exp(gamma_neg * log_p)
  neg_term = weight * log_not_pm
  return -(labels * pos_term + (1.0 - labels) * neg_term)


def ldam(
    *,
    logits: jax.Array,
    labels: jax.Array,
    margins: ArrayLike,
    scale: float = 1.0,
    pos_weight: ArrayLike = 1.0,
    neg_weight: ArrayLike = 1.0,
) -> jax.Array:
  """Label-distribution-aware margin loss (Cao et al. 2019) for sigmoid outputs.

  z = s (x - Δ_c y),  loss = -[w⁺_c y log σ(z) + w⁻_c (1 - y) log(1 - σ(z))]

  Each class is its own binary problem: its positives must beat the decision
  boundary by a margin Δ_c that is larger for rarer classes (Δ_c ∝ n_c^(-1/4),
  see `ldam_margins`), and the margined logit is scaled by s before the binary
  cross-entropy. Negatives keep their logit (their margin is 0). The margin is
  a training device only: predictions use the raw logits. The weights w⁺/w⁻
  are for deferred re-weighting (see `get_loss_fn`): 1 before it starts.

  Args:
    logits: (B, C) floating logits.
    labels: (B, C) targets in [0, 1] (a soft label takes a fraction y of the margin).
    margins: scalar or (C,) margins Δ_c >= 0.
    scale: s > 0 applied to the margined logits.
    pos_weight: scalar or (C,) weight w⁺ of the positive term.
    neg_weight: scalar or (C,) weight w⁻ of the negative term.

  Returns:
    (B, C) elementwise loss.
  """
  labels = jnp.asarray(labels, logits.dtype)
  margins = jnp.asarray(margins, logits.dtype)
  z = scale * (logits - margins * labels)
  return class_balanced(logits=z, labels=labels, pos_weight=pos_weight, neg_weight=neg_weight)


def logit_adjusted(
    *, logits: jax.Array, labels: jax.Array, log_prior_odds: ArrayLike, tau: float = 1.0
) -> jax.Array:
  """Logit-adjusted binary cross-entropy (Menon et al. 2021) for sigmoid outputs.

  loss = BCE(x + τ log(π_c / (1 - π_c)), y)

  π_c is class c's prior (its share of positives in training). Adding the log
  prior odds during training means the model's own logit x only has to carry
  the evidence beyond the prior: with τ = 1 the raw logit estimates the
  balanced (prior-free) log odds. Prediction uses the RAW logits, σ(x), with
  no adjustment: nothing changes in evaluation or prediction code, and
  thresholds are chosen on validation as usual. (A model whose head bias
  starts at the log prior odds, model.head_bias='prior', would start with
  twice the prior in the adjusted logit; the :logit_adjusted arm starts it at
  zero.)

  Args:
    logits: (B, C) floating logits.
    labels: (B, C) targets in [0, 1].
    log_prior_odds: scalar or (C,) log(π_c / (1 - π_c)) (see `log_prior_odds`).
    tau: τ, the strength of the adjustment (0 = plain BCE).

  Returns:
    (B, C) elementwise loss.
  """
  adjusted = logits + tau * jnp.asarray(log_prior_odds, logits.dtype)
  return optax.losses.sigmoid_binary_cross_entropy(adjusted, jnp.asarray(labels, logits.dtype))


# ----------------------------------------------------------------------------
# Class weights from counts (NumPy).
# ----------------------------------------------------------------------------


def _counts(*, num_pos, num_total):
  """Returns float64 (n_pos, n_neg), each clipped to >= 1 so every ratio is defined."""
  num_pos = np.asarray(num_pos, np.float64)
  num_total = np.asarray(num_total, np.float64)
  if np.any(num_pos < 0) or np.any(num_pos > num_total):
    raise ValueError("Need 0 <= num_pos <= num_total for every class.")
  num_neg = num_total - num_pos
  return np.maximum(num_pos, 1.0), np.maximum(num_neg, 1.0)


def _effective_number(n: np.ndarray, beta: float) -> np.ndarray:
  """Cui et al.'s effective number of samples E_n = (1 - β^n) / (1 - β) (E_n = n at β -> 1)."""
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"beta must be in [0, 1), got {beta}.")
  return (1.0 - np.power(beta, n)) / (1.0 - beta)


def pos_weights(
    *, num_pos: ArrayLike, num_total: ArrayLike, method: str, beta: float = 0.999
) -> np.ndarray:
  """Per-class positive-term weights for `weighted_bce` (negatives keep weight 1).

  With n⁺_c positives and n⁻_c = num_total - n⁺_c negatives for class c:

  * 'inverse': w_c = n⁻_c / n⁺_c. The weighted positives then carry the same
    total weight as the negatives (the "balanced" pos_weight of PyTorch's docs);
    very large for rare classes (Hernia in NIH ChestX-ray14: ~500).
  * 'sqrt_inverse': w_c = sqrt(n⁻_c / n⁺_c), a softer version of 'inverse'.
  * 'effective': w_c = E(n⁻_c) / E(n⁺_c), the inverse ratio with counts replaced
    by Cui et al.'s effective numbers E(n) = (1 - β^n) / (1 - β). Since E(n)
    saturates at 1 / (1 - β), the weight is at most ~1 / (1 - β) / E(n⁺) and
    tends to 'inverse' as β -> 1 and to 1 (no weighting) at β = 0. It equals
    pos_weight / neg_weight of `effective_number_weights`.

  Counts of 0 are clipped to 1, so a class without positives (or negatives)
  gets a finite weight.

  Args:
    num_pos: (C,) number of positive training examples per class.
    num_total: scalar (or (C,)) number of labelled training examples.
    method: 'inverse', 'sqrt_inverse' or 'effective'.
    beta: β of the effective number (used by 'effective' only).

  Returns:
    (C,) float32 weights.
  """
  n_pos, n_neg = _counts(num_pos=num_pos, num_total=num_total)
  if method == "inverse":
    w = n_neg / n_pos
  elif method == "sqrt_inverse":
    w = np.sqrt(n_neg / n_pos)
  elif method == "effective":
    w = _effective_number(n_neg, beta) / _effective_number(n_pos, beta)
  else:
    raise ValueError(f"Unknown pos_weight method {method!r}; choose one of {POS_WEIGHT_METHODS}.")
  return np.asarray(w, np.float32)


def effective_number_weights(
    *, num_pos: ArrayLike, num_total: ArrayLike, beta: float = 0.999
) -> tuple[np.ndarray, np.ndarray]:
  """Class-balanced (Cui et al. 2019) weights for the positives and negatives of each class.

  w = (1 - β) / (1 - β^n) = 1 / E(n) for n = n⁺_c (positives) and n = n⁻_c
  (negatives) of each class c, then normalised so that w⁺_c + w⁻_c = 2 (the
  number of "classes" of each binary problem, as in the paper). Counts of 0
  are clipped to 1.

  Args:
    num_pos: (C,) number of positive training examples per class.
    num_total: scalar (or (C,)) number of labelled training examples.
    beta: β in [0, 1); 0 gives w⁺ = w⁻ = 1, β -> 1 gives inverse-frequency weights.

  Returns:
    (pos_weight, neg_weight), each (C,) float32.
  """
  n_pos, n_neg = _counts(num_pos=num_pos, num_total=num_total)
  w_pos = 1.0 / _effective_number(n_pos, beta)
  w_neg = 1.0 / _effective_number(n_neg, beta)
  scale = 2.0 / (w_pos + w_neg)
  return np.asarray(w_pos * scale, np.float32), np.asarray(w_neg * scale, np.float32)


def ldam_margins(*, num_pos: ArrayLike, max_margin: float = 0.5) -> np.ndarray:
  """LDAM's per-class margins Δ_c = max_margin · (n⁺_c / min_c n⁺_c)^(-1/4).

  Δ_c ∝ n_c^(-1/4) (Cao et al. 2019), scaled so that the rarest class gets
  `max_margin`. Counts of 0 are clipped to 1.

  Args:
    num_pos: (C,) number of positive training examples per class.
    max_margin: the largest margin (> 0).

  Returns:
    (C,) float32 margins in (0, max_margin].
  """
  if max_margin <= 0:
    raise ValueError(f"max_margin must be > 0, got {max_margin}.")
  n = np.maximum(np.asarray(num_pos, np.float64), 1.0)
  m = n ** -0.25
  return np.asarray(max_margin * m / m.max(), np.float32)


def log_prior_odds(*, num_pos: ArrayLike, num_total: ArrayLike) -> np.ndarray:
  """log(n⁺_c / n⁻_c), each class's log prior odds in training (counts of 0 clipped to 1); (C,) float32."""
  n_pos, n_neg = _counts(num_pos=num_pos, num_total=num_total)
  return np.asarray(np.log(n_pos / n_neg), np.float32)


# ----------------------------------------------------------------------------
# Selection from config.
# ----------------------------------------------------------------------------


def _get(config, name, default=None):
  """Reads `config.name` from a ConfigDict (or dict), with a default when absent."""
  value = config.get(name, default)
  return default if value is None else value


def _cap(weights: np.ndarray, cap) -> np.ndarray:
  """Clips weights at `cap`; 0 or None means no cap."""
  if not cap:
    return weights
  return np.minimum(weights, np.float32(cap)).astype(np.float32)


def get_loss_fn(config_loss, *, num_pos=None, num_total=None, num_steps=None) -> LossFn:
  """Returns `loss_fn(logits, labels, step) -> (B, C) elementwise loss` chosen by `config_loss.name`.

  `step` is the optimiser step, a scalar integer array: the train step passes
  its state's `step`, the SMOTE/MLSMOTE head training its own step. Only
  'ldam' reads it (deferred re-weighting); every other loss ignores it.

  Fields read from `config_loss` (an ml_collections.ConfigDict); fields
  missing from an older config take the defaults of configs/base.py:

  * name: one of LOSS_NAMES.
  * pos_weight: for 'weighted_bce', how positive weights are derived from
    counts: 'inverse', 'sqrt_inverse' or 'effective' (see `pos_weights`).
  * pos_weight_max: cap on the 'weighted_bce' weights (e.g. 100.0); 0 or None
    for no cap. ('class_balanced' weights are at most 2 and are never capped.)
  * alpha: 'focal' α; -1 (or None) means no α weighting, else a float or a
    per-class sequence of C floats.
  * gamma: focusing exponent for 'focal' and 'class_balanced'.
  * beta: β of the effective number for 'class_balanced', for
    pos_weight='effective' and for the deferred re-weighting of 'ldam'.
  * gamma_pos, gamma_neg, clip: 'asl' (see `asl`).
  * max_margin, scale: 'ldam' (the rarest class's margin, see `ldam_margins`;
    the scale s of the margined logits).
  * drw_start: 'ldam' deferred re-weighting: from step
    round(drw_start * num_steps) on, the positive and negative terms of each
    class take the class-balanced weights of `effective_number_weights`
    (β = beta); before it they weigh 1. 1.0 (or more) = never.
  * tau: 'logit_adjusted' strength τ of the log-prior-odds adjustment.

  Args:
    config_loss: the loss ConfigDict.
    num_pos: (C,) positive counts of the training set (needed by
      'weighted_bce', 'class_balanced', 'ldam' and 'logit_adjusted').
    num_total: number of training examples (scalar or (C,)).
    num_steps: optimiser steps of the whole training ('ldam' with
      drw_start < 1 needs it to place the switch).

  Returns:
    A pure function of (logits, labels, step), safe to call under jit.
  """
  name = config_loss.get("name")
  if name not in LOSS_NAMES:
    raise ValueError(f"Unknown loss.name {name!r}; choose one of {LOSS_NAMES}.")
  gamma = float(_get(config_loss, "gamma", 2.0 if name == "focal" else 0.0))
  beta = float(_get(config_loss, "beta", 0.999))

  if name in ("weighted_bce", "class_balanced", "ldam", "logit_adjusted") and (
      num_pos is None or num_total is None):
    raise ValueError(f"loss {name!r} needs num_pos and num_total (training label counts).")

  if name == "bce":
    return lambda logits, labels, step: bce(logits=logits, labels=labels)

  if name == "weighted_bce":
    method = _get(config_loss, "pos_weight", "inverse")
    w = pos_weights(num_pos=num_pos, num_total=num_total, method=method, beta=beta)
    w = _cap(w, config_loss.get("pos_weight_max"))
    return lambda logits, labels, step: weighted_bce(logits=logits, labels=labels, pos_weight=w)

  if name == "focal":
    alpha = config_loss.get("alpha")
    if alpha is not None:
      alpha = np.asarray(alpha, np.float32)
      if alpha.ndim == 0 and alpha == -1:
        alpha = None
    return lambda logits, labels, step: focal(logits=logits, labels=labels, alpha=alpha, gamma=gamma)

  if name == "asl":
    gamma_pos = float(_get(config_loss, "gamma_pos", 1.0))
    gamma_neg = float(_get(config_loss, "gamma_neg", 4.0))
    clip = float(_get(config_loss, "clip", 0.05))
    if gamma_pos < 0 or gamma_neg < 0 or not 0 <= clip < 1:
      raise ValueError(f"asl needs loss.gamma_pos >= 0, loss.gamma_neg >= 0 and 0 <= loss.clip < 1; got "
                       f"{gamma_pos}, {gamma_neg}, {clip}.")
    return lambda logits, labels, step: asl(logits=logits, labels=labels, gamma_pos=gamma_pos,
                                            gamma_neg=gamma_neg, clip=clip)

  if name == "ldam":
    margins = ldam_margins(num_pos=num_pos, max_margin=float(_get(config_loss, "max_margin", 0.5)))
    scale = float(_get(config_loss, "scale", 1.0))
    if scale <= 0:
      raise ValueError(f"ldam needs loss.scale > 0, got {scale}.")
    drw_start = float(_get(config_loss, "drw_start", 0.8))
    if drw_start < 0:
      raise ValueError(f"loss.drw_start must be >= 0 (a fraction of training), got {drw_start}.")
    if drw_start >= 1:
      return lambda logits, labels, step: ldam(logits=logits, labels=labels, margins=margins, scale=scale)
    if num_steps is None:
      raise ValueError(f"ldam with loss.drw_start={drw_start} < 1 needs num_steps (the training length).")
    drw_step = int(round(drw_start * num_steps))
    w_pos, w_neg = effective_number_weights(num_pos=num_pos, num_total=num_total, beta=beta)

    def ldam_drw(logits, labels, step):
      on = jnp.asarray(step) >= drw_step
      return ldam(logits=logits, labels=labels, margins=margins, scale=scale,
                  pos_weight=jnp.where(on, w_pos, 1.0), neg_weight=jnp.where(on, w_neg, 1.0))
    return ldam_drw

  if name == "logit_adjusted":
    odds = log_prior_odds(num_pos=num_pos, num_total=num_total)
    tau = float(_get(config_loss, "tau", 1.0))
    return lambda logits, labels, step: logit_adjusted(logits=logits, labels=labels, log_prior_odds=odds,
                                                       tau=tau)

  # class_balanced
  w_pos, w_neg = effective_number_weights(num_pos=num_pos, num_total=num_total, beta=beta)
  return lambda logits, labels, step: class_balanced(
      logits=logits, labels=labels, pos_weight=w_pos, neg_weight=w_neg, gamma=gamma)

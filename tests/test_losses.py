"""Tests for jaxcxr.losses against float64 NumPy references written from the formulas."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxcxr import losses

B, C = 16, 14
VAL_TOL = dict(rtol=1e-4, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------
# Float64 references, naive formulas straight from the math.
# ----------------------------------------------------------------------------


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def ref_bce(x, y):
  p = _sigmoid(x)
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def ref_weighted_bce(x, y, w):
  p = _sigmoid(x)
  return -(w * y * np.log(p) + (1 - y) * np.log(1 - p))


def ref_focal(x, y, alpha, gamma):
  # -α_t (1 - p_t)^γ CE, with 1 - p_t = y (1 - p) + (1 - y) p (= -α_t (1-p_t)^γ log p_t for hard y).
  p = _sigmoid(x)
  one_minus_pt = y * (1 - p) + (1 - y) * p
  ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  alpha_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
  return alpha_t * one_minus_pt**gamma * ce


def ref_class_balanced(x, y, wp, wn, gamma):
  p = _sigmoid(x)
  return -(wp * y * (1 - p)**gamma * np.log(p) + wn * (1 - y) * p**gamma * np.log(1 - p))


def fd_grad(f, x, h=1e-5):
  """Central finite differences of an elementwise function, in float64."""
  return (f(x + h) - f(x - h)) / (2 * h)


def jax_value_and_grad(fn, x, y):
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  value = fn(x, y)
  grad = jax.grad(lambda x: fn(x, y).sum())(x)
  assert value.shape == x.shape and value.dtype == jnp.float32
  return np.asarray(value, np.float64), np.asarray(grad, np.float64)


def _data(seed, soft):
  rng = np.random.default_rng(seed)
  # Round to float32 so the reference sees exactly the inputs JAX sees.
  x = rng.uniform(-8, 8, (B, C)).astype(np.float32).astype(np.float64)
  if soft:
    y = rng.uniform(0, 1, (B, C)).astype(np.float32).astype(np.float64)
  else:
    y = (rng.uniform(size=(B, C)) < 0.3).astype(np.float64)
  return x, y


def _weights(seed, per_class, low, high):
  if not per_class:
    return np.float64(np.float32((low + high) / 2))
  w = np.random.default_rng(seed).uniform(low, high, C)
  return w.astype(np.float32).astype(np.float64)


def _check(jfn, rfn, x, y):
  value, grad = jax_value_and_grad(jfn, x, y)
  np.testing.assert_allclose(value, rfn(x), **VAL_TOL)
  np.testing.assert_allclose(grad, fd_grad(rfn, x), **GRAD_TOL)


LABEL_KINDS = pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
WEIGHT_KINDS = pytest.mark.parametrize("per_class", [False, True], ids=["scalar", "per_class"])


# ----------------------------------------------------------------------------
# Values and gradients against the references.
# ----------------------------------------------------------------------------


@LABEL_KINDS
def test_bce_matches_reference(soft):
  x, y = _data(0, soft)
  _check(lambda x, y: losses.bce(logits=x, labels=y), lambda x: ref_bce(x, y), x, y)


@LABEL_KINDS
@WEIGHT_KINDS
def test_weighted_bce_matches_reference(soft, per_class):
  x, y = _data(1, soft)
  w = _weights(2, per_class, 0.5, 50.0)
  _check(lambda x, y: losses.weighted_bce(logits=x, labels=y, pos_weight=w),
         lambda x: ref_weighted_bce(x, y, w), x, y)


@LABEL_KINDS
@pytest.mark.parametrize("alpha_kind", ["none", "scalar", "per_class"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_reference(soft, alpha_kind, gamma):
  x, y = _data(3, soft)
  alpha = None if alpha_kind == "none" else _weights(4, alpha_kind == "per_class", 0.05, 0.95)
  _check(lambda x, y: losses.focal(logits=x, labels=y, alpha=alpha, gamma=gamma),
         lambda x: ref_focal(x, y, alpha, gamma), x, y)


@LABEL_KINDS
@WEIGHT_KINDS
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_class_balanced_matches_reference(soft, per_class, gamma):
  x, y = _data(5, soft)
  wp = _weights(6, per_class, 1.0, 1.99)
  wn = _weights(7, per_class, 0.01, 1.0)
  _check(lambda x, y: losses.class_balanced(logits=x, labels=y, pos_weight=wp, neg_weight=wn, gamma=gamma),
         lambda x: ref_class_balanced(x, y, wp, wn, gamma), x, y)


# ----------------------------------------------------------------------------
# Stability at extreme logits.
# ----------------------------------------------------------------------------

EXTREME = np.array([-100.0, -30.0, 30.0, 100.0])


def _extreme_cases():
  """(name, fn, w_pos, w_neg): the loss -> w_pos |x| (y=1, x -> -inf) and w_neg |x| (y=0, x -> +inf)."""
  return [
      ("bce", lambda x, y: losses.bce(logits=x, labels=y), 1.0, 1.0),
      ("weighted_bce", lambda x, y: losses.weighted_bce(logits=x, labels=y, pos_weight=7.0), 7.0, 1.0),
      ("focal", lambda x, y: losses.focal(logits=x, labels=y, alpha=0.25, gamma=0.5), 0.25, 0.75),
      ("focal_g2", lambda x, y: losses.focal(logits=x, labels=y, gamma=2.0), 1.0, 1.0),
      ("class_balanced", lambda x, y: losses.class_balanced(
          logits=x, labels=y, pos_weight=1.5, neg_weight=0.5, gamma=0.5), 1.5, 0.5),
  ]


@pytest.mark.parametrize("name,fn,w_pos,w_neg", _extreme_cases(), ids=[c[0] for c in _extreme_cases()])
def test_stable_at_extreme_logits(name, fn, w_pos, w_neg):
  del name
  for y_val in (0.0, 1.0, 0.3):
    y = np.full_like(EXTREME, y_val)
    value, grad = jax_value_and_grad(fn, EXTREME, y)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (y_val, value, grad)
    assert np.all(value >= 0)
  # Positives: wrong side -> linear in |x| with slope -w_pos; right side -> 0.
  value, grad = jax_value_and_grad(fn, EXTREME, np.ones_like(EXTREME))
  np.testing.assert_allclose(value, [100 * w_pos, 30 * w_pos, 0, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, [-w_pos, -w_pos, 0, 0], rtol=1e-5, atol=1e-6)
  # Negatives: mirror image.
  value, grad = jax_value_and_grad(fn, EXTREME, np.zeros_like(EXTREME))
  np.testing.assert_allclose(value, [0, 0, 30 * w_neg, 100 * w_neg], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, [0, 0, w_neg, w_neg], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Identities between losses.
# ----------------------------------------------------------------------------


@LABEL_KINDS
def test_special_cases_reduce_to_each_other(soft):
  x, y = _data(8, soft)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  base = losses.bce(logits=x, labels=y)
  np.testing.assert_allclose(losses.weighted_bce(logits=x, labels=y, pos_weight=1.0), base, rtol=1e-6)
  np.testing.assert_allclose(losses.focal(logits=x, labels=y, alpha=None, gamma=0.0), base, rtol=1e-6)
  np.testing.assert_allclose(
      losses.class_balanced(logits=x, labels=y, pos_weight=1.0, neg_weight=1.0, gamma=0.0), base, rtol=1e-6)
  w = np.linspace(0.5, 20, C).astype(np.float32)
  np.testing.assert_allclose(
      losses.class_balanced(logits=x, labels=y, pos_weight=w, neg_weight=1.0),
      losses.weighted_bce(logits=x, labels=y, pos_weight=w), rtol=1e-6)


def test_class_balanced_is_weighted_focal_for_hard_labels():
  x, y = _data(9, soft=False)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  wp, wn = np.linspace(1.0, 1.9, C), np.linspace(1.0, 0.1, C)
  w_t = wp * y + wn * (1 - y)
  np.testing.assert_allclose(
      losses.class_balanced(logits=x, labels=y, pos_weight=wp, neg_weight=wn, gamma=2.0),
      w_t * losses.focal(logits=x, labels=y, gamma=2.0), rtol=1e-5, atol=1e-7)


def test_losses_jit():
  x, y = _data(10, soft=True)
  fn = jax.jit(lambda x, y: losses.class_balanced(logits=x, labels=y, pos_weight=1.2, neg_weight=0.8, gamma=2.0))
  np.testing.assert_allclose(fn(x.astype(np.float32), y.astype(np.float32)),
                             ref_class_balanced(x, y, 1.2, 0.8, 2.0), **VAL_TOL)


# ----------------------------------------------------------------------------
# Weight helpers, on hand-computed counts.
# ----------------------------------------------------------------------------


def test_pos_weights_inverse_and_sqrt():
  # n_pos = [1, 4, 0, 10] of 10  ->  n_neg = [9, 6, 10, 0]; zero counts are clipped to 1.
  num_pos, num_total = [1, 4, 0, 10], 10
  w = losses.pos_weights(num_pos=num_pos, num_total=num_total, method="inverse")
  assert w.dtype == np.float32 and w.shape == (4,)
  np.testing.assert_allclose(w, [9.0, 1.5, 10.0, 0.1], rtol=1e-6)
  w = losses.pos_weights(num_pos=num_pos, num_total=num_total, method="sqrt_inverse")
  np.testing.assert_allclose(w, [3.0, np.sqrt(1.5), np.sqrt(10.0), np.sqrt(0.1)], rtol=1e-6)
  with pytest.raises(ValueError, match="inverse"):
    losses.pos_weights(num_pos=num_pos, num_total=num_total, method="nope")


def test_effective_weights_by_hand():
  # β = 0.5: E(n) = (1 - 0.5^n) / 0.5, so E(1) = 1, E(2) = 1.5.
  # Class 0: 1 positive, 2 negatives; class 1: 2 positives, 1 negative.
  num_pos, num_total = [1, 2], 3
  w = losses.pos_weights(num_pos=num_pos, num_total=num_total, method="effective", beta=0.5)
  np.testing.assert_allclose(w, [1.5, 2 / 3], rtol=1e-6)
  # 1/E: class 0 -> (1, 2/3), normalised to sum 2 -> (1.2, 0.8); class 1 mirrored.
  wp, wn = losses.effective_number_weights(num_pos=num_pos, num_total=num_total, beta=0.5)
  assert wp.dtype == np.float32 and wn.dtype == np.float32
  np.testing.assert_allclose(wp, [1.2, 0.8], rtol=1e-6)
  np.testing.assert_allclose(wn, [0.8, 1.2], rtol=1e-6)


def test_effective_weights_limits():
  num_pos, num_total = np.array([3, 50, 0, 700]), 1000
  wp, wn = losses.effective_number_weights(num_pos=num_pos, num_total=num_total, beta=0.999)
  assert np.all(np.isfinite(wp)) and np.all(np.isfinite(wn))
  np.testing.assert_allclose(wp + wn, 2.0, rtol=1e-6)
  assert np.all(np.diff(wp[np.argsort(num_pos)]) < 0)  # rarer positives weigh more
  # β = 0: no re-weighting.
  wp, wn = losses.effective_number_weights(num_pos=num_pos, num_total=num_total, beta=0.0)
  np.testing.assert_allclose(wp, 1.0)
  np.testing.assert_allclose(wn, 1.0)
  np.testing.assert_allclose(
      losses.pos_weights(num_pos=num_pos, num_total=num_total, method="effective", beta=0.0), 1.0)
  # β -> 1: effective numbers -> counts, so 'effective' -> 'inverse'.
  np.testing.assert_allclose(
      losses.pos_weights(num_pos=num_pos, num_total=num_total, method="effective", beta=1 - 1e-9),
      losses.pos_weights(num_pos=num_pos, num_total=num_total, method="inverse"), rtol=1e-4)
  # pos_weights('effective') is the ratio of the class-balanced weights.
  wp, wn = losses.effective_number_weights(num_pos=num_pos, num_total=num_total, beta=0.99)
  np.testing.assert_allclose(
      losses.pos_weights(num_pos=num_pos, num_total=num_total, method="effective", beta=0.99), wp / wn, rtol=1e-5)
  with pytest.raises(ValueError):
    losses.effective_number_weights(num_pos=num_pos, num_total=num_total, beta=1.0)


# ----------------------------------------------------------------------------
# get_loss_fn.
# ----------------------------------------------------------------------------


def _config(**kw):
  base = dict(name="bce", pos_weight="inverse", pos_weight_max=100.0, alpha=-1.0, gamma=2.0, beta=0.999)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_get_loss_fn_dispatch():
  x, y = _data(11, soft=False)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  num_pos, num_total = np.array([2, 40, 500, 0] + [100] * (C - 4)), 1000
  counts = dict(num_pos=num_pos, num_total=num_total)

  def close(name, expected, **kw):
    got = losses.get_loss_fn(_config(name=name, **kw), **counts)(x, y, jnp.int32(0))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)

  close("bce", losses.bce(logits=x, labels=y))
  w = np.minimum(losses.pos_weights(method="inverse", **counts), 100.0)
  assert w.max() == 100.0  # the cap bit (998 / 1 for the class without positives)
  close("weighted_bce", losses.weighted_bce(logits=x, labels=y, pos_weight=w))
  close("weighted_bce", losses.weighted_bce(
      logits=x, labels=y, pos_weight=losses.pos_weights(method="inverse", **counts)), pos_weight_max=0)
  close("weighted_bce", losses.weighted_bce(
      logits=x, labels=y, pos_weight=losses.pos_weights(method="sqrt_inverse", **counts)),
      pos_weight="sqrt_inverse")
  close("weighted_bce", losses.weighted_bce(
      logits=x, labels=y, pos_weight=losses.pos_weights(method="effective", beta=0.99, **counts)),
      pos_weight="effective", beta=0.99)
  close("focal", losses.focal(logits=x, labels=y, alpha=None, gamma=2.0))
  close("focal", losses.focal(logits=x, labels=y, alpha=0.25, gamma=1.0), alpha=0.25, gamma=1.0)
  wp, wn = losses.effective_number_weights(beta=0.99, **counts)
  close("class_balanced", losses.class_balanced(
      logits=x, labels=y, pos_weight=wp, neg_weight=wn, gamma=0.5), beta=0.99, gamma=0.5)
  # bce and focal need no counts.
  losses.get_loss_fn(_config(name="focal"))(x, y, jnp.int32(0))


def test_get_loss_fn_errors():
  with pytest.raises(ValueError, match="bce.*weighted_bce.*focal.*class_balanced.*asl.*ldam.*logit_adjusted"):
    losses.get_loss_fn(_config(name="hinge"), num_pos=[1] * C, num_total=10)
  with pytest.raises(ValueError, match="num_pos"):
    losses.get_loss_fn(_config(name="weighted_bce"))


# ----------------------------------------------------------------------------
# The long-tail losses: asl, ldam (with deferred re-weighting), logit_adjusted.
# Their references take log σ(z) = -logaddexp(0, -z) in float64 (exact for any z, where 1 / (1 + exp(-z))
# would round to 0 or 1 at |z| = 50), and otherwise follow the formulas literally. Tolerances are tighter
# than VAL_TOL / GRAD_TOL: float32 agrees with the float64 references to 1e-5 in value and gradient.
# ----------------------------------------------------------------------------

LT_TOL = dict(rtol=1e-5, atol=1e-6)


def _log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def ref_asl(x, y, gamma_pos, gamma_neg, clip):
  p = np.exp(_log_sigmoid(x))
  pos = (1 - p) ** gamma_pos * _log_sigmoid(x)
  if clip > 0:
    p_m = np.maximum(p - clip, 0.0)
    neg = p_m ** gamma_neg * np.log(1 - p_m)
  else:  # 1 - p = σ(-x), exactly.
    neg = p ** gamma_neg * _log_sigmoid(-x)
  return -(y * pos + (1 - y) * neg)


def ref_ldam(x, y, margins, scale, wp=1.0, wn=1.0):
  z = scale * (x - margins * y)
  return -(wp * y * _log_sigmoid(z) + wn * (1 - y) * _log_sigmoid(-z))


def ref_logit_adjusted(x, y, log_prior_odds, tau):
  z = x + tau * log_prior_odds
  return -(y * _log_sigmoid(z) + (1 - y) * _log_sigmoid(-z))


EXTREMES = np.array([-50.0, 50.0, -30.0, 30.0, -15.0, 15.0, -50.0, 50.0])


def _lt_data(seed, soft):
  """Random logits in [-8, 8] with every label value also seen at logits of +-50, +-30, +-15."""
  x, y = _data(seed, soft)
  x[:len(EXTREMES)] = EXTREMES[:, None]  # Rows 0..7: extreme logits, each against the row's labels.
  y[:len(EXTREMES), :2] = [[0, 1]]  # Both hard labels meet every extreme logit.
  return x, y


def _lt_check(jfn, rfn, x, y):
  value, grad = jax_value_and_grad(jfn, x, y)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(value, rfn(x), **LT_TOL)
  np.testing.assert_allclose(grad, fd_grad(rfn, x), **LT_TOL)


def _per_class(seed, low, high):
  return np.random.default_rng(seed).uniform(low, high, C).astype(np.float32).astype(np.float64)


@LABEL_KINDS
@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(1.0, 4.0, 0.05), (0.0, 2.0, 0.2), (0.5, 0.5, 0.0),
                                                      (2.0, 0.0, 0.05), (0.0, 0.0, 0.0)])
def test_asl_matches_reference(soft, gamma_pos, gamma_neg, clip):
  x, y = _lt_data(20, soft)
  _lt_check(lambda x, y: losses.asl(logits=x, labels=y, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip),
            lambda x: ref_asl(x, y, gamma_pos, gamma_neg, clip), x, y)


@LABEL_KINDS
@pytest.mark.parametrize("scale", [1.0, 10.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "drw_weights"])
def test_ldam_matches_reference(soft, scale, weighted):
  x, y = _lt_data(21, soft)
  margins = _per_class(22, 0.05, 0.5)
  wp, wn = (_per_class(23, 1.0, 1.99), _per_class(24, 0.01, 1.0)) if weighted else (1.0, 1.0)
  _lt_check(lambda x, y: losses.ldam(logits=x, labels=y, margins=margins, scale=scale, pos_weight=wp,
                                     neg_weight=wn),
            lambda x: ref_ldam(x, y, margins, scale, wp, wn), x, y)


@LABEL_KINDS
@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5])
def test_logit_adjusted_matches_reference(soft, tau):
  x, y = _lt_data(25, soft)
  odds = losses.log_prior_odds(num_pos=np.geomspace(2, 5000, C).astype(int), num_total=10_000).astype(np.float64)
  _lt_check(lambda x, y: losses.logit_adjusted(logits=x, labels=y, log_prior_odds=odds, tau=tau),
            lambda x: ref_logit_adjusted(x, y, odds, tau), x, y)


@pytest.mark.parametrize("name", ["asl", "asl_no_clip", "ldam", "logit_adjusted"])
def test_long_tail_losses_finite_far_beyond_50(name):
  fn = {"asl": lambda x, y: losses.asl(logits=x, labels=y),
        "asl_no_clip": lambda x, y: losses.asl(logits=x, labels=y, gamma_neg=0.5, clip=0.0),
        "ldam": lambda x, y: losses.ldam(logits=x, labels=y, margins=0.5, scale=30.0),
        "logit_adjusted": lambda x, y: losses.logit_adjusted(logits=x, labels=y, log_prior_odds=-6.0)}[name]
  x = np.array([-1e4, -100.0, -50.0, 50.0, 100.0, 1e4])
  for y_val in (0.0, 1.0, 0.3):
    value, grad = jax_value_and_grad(fn, x, np.full_like(x, y_val))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (y_val, value, grad)
    assert np.all(value >= 0)


def test_asl_discards_easy_negatives_and_reduces_to_bce_and_focal():
  x, y = _data(26, soft=False)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  # p <= clip: a negative costs nothing and gets no gradient.
  easy = jnp.asarray([[-10.0, -3.0, np.log(0.04 / 0.96)]])
  zeros = jnp.zeros_like(easy)
  assert np.all(np.asarray(losses.asl(logits=easy, labels=zeros)) == 0)
  assert np.all(np.asarray(jax.grad(lambda v: losses.asl(logits=v, labels=zeros).sum())(easy)) == 0)
  np.testing.assert_allclose(losses.asl(logits=x, labels=y, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
                             losses.bce(logits=x, labels=y), rtol=1e-6)
  np.testing.assert_allclose(losses.asl(logits=x, labels=y, gamma_pos=2.0, gamma_neg=2.0, clip=0.0),
                             losses.focal(logits=x, labels=y, gamma=2.0), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="clip"):
    losses.asl(logits=x, labels=y, clip=1.0)


def test_ldam_margins_and_log_prior_odds_by_hand():
  # n = [1, 16, 81, 0 -> 1]: n^(-1/4) = [1, 1/2, 1/3, 1], the rarest classes get max_margin.
  np.testing.assert_allclose(losses.ldam_margins(num_pos=[1, 16, 81, 0], max_margin=0.6), [0.6, 0.3, 0.2, 0.6],
                             rtol=1e-6)
  np.testing.assert_allclose(losses.ldam_margins(num_pos=[16, 81], max_margin=0.5), [0.5, 0.5 * 2 / 3],
                             rtol=1e-6)
  # 10 of 1000 -> log(10 / 990); 500 -> 0; 0 -> log(1 / 1000) (clipped to 1).
  np.testing.assert_allclose(losses.log_prior_odds(num_pos=[10, 500, 0], num_total=1000),
                             np.log([10 / 990, 1.0, 1 / 1000]), rtol=1e-6)
  with pytest.raises(ValueError):
    losses.ldam_margins(num_pos=[1, 2], max_margin=0.0)


def test_ldam_and_logit_adjustment_move_the_boundary_the_right_way():
  x = jnp.zeros((1, 2), jnp.float32)
  ones = jnp.ones((1, 2), jnp.float32)
  # A positive at logit 0 costs more with a margin; a negative costs the same.
  m = losses.ldam(logits=x, labels=ones, margins=jnp.asarray([0.0, 0.5]))
  assert m[0, 1] > m[0, 0] == pytest.approx(np.log(2), rel=1e-6)
  np.testing.assert_allclose(losses.ldam(logits=x, labels=0 * ones, margins=0.5), np.log(2), rtol=1e-6)
  # A rare class (negative log prior odds) makes a positive at raw logit 0 cost more; tau 0 is bce.
  la = losses.logit_adjusted(logits=x, labels=ones, log_prior_odds=jnp.asarray([0.0, -4.0]))
  assert la[0, 1] > la[0, 0] == pytest.approx(np.log(2), rel=1e-6)
  xs, ys = (jnp.asarray(a, jnp.float32) for a in _data(27, soft=True))
  np.testing.assert_allclose(losses.logit_adjusted(logits=xs, labels=ys, log_prior_odds=-3.0, tau=0.0),
                             losses.bce(logits=xs, labels=ys), rtol=1e-6)


def _counts_14():
  return np.array([2, 40, 500, 0] + [100] * (C - 4)), 1000


def test_get_loss_fn_long_tail_dispatch():
  x, y = _data(28, soft=False)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  num_pos, num_total = _counts_14()
  counts = dict(num_pos=num_pos, num_total=num_total)
  step = jnp.int32(0)
  cfg = _config(name="asl", gamma_pos=0.5, gamma_neg=3.0, clip=0.1)
  np.testing.assert_allclose(losses.get_loss_fn(cfg)(x, y, step),
                             losses.asl(logits=x, labels=y, gamma_pos=0.5, gamma_neg=3.0, clip=0.1), rtol=1e-6)
  # Fields missing from an older config: the documented defaults (gamma_neg 4, gamma_pos 1, clip 0.05).
  np.testing.assert_allclose(losses.get_loss_fn(_config(name="asl"))(x, y, step),
                             losses.asl(logits=x, labels=y, gamma_pos=1.0, gamma_neg=4.0, clip=0.05), rtol=1e-6)
  cfg = _config(name="logit_adjusted", tau=0.5)
  np.testing.assert_allclose(
      losses.get_loss_fn(cfg, **counts)(x, y, step),
      losses.logit_adjusted(logits=x, labels=y, log_prior_odds=losses.log_prior_odds(**counts), tau=0.5),
      rtol=1e-6)
  for name in ("ldam", "logit_adjusted"):
    with pytest.raises(ValueError, match="num_pos"):
      losses.get_loss_fn(_config(name=name))


def test_ldam_drw_switches_on_class_balanced_weights_at_its_step():
  x, y = _data(29, soft=False)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  num_pos, num_total = _counts_14()
  cfg = _config(name="ldam", max_margin=0.4, scale=2.0, drw_start=0.5, beta=0.99)
  fn = jax.jit(losses.get_loss_fn(cfg, num_pos=num_pos, num_total=num_total, num_steps=100))
  margins = losses.ldam_margins(num_pos=num_pos, max_margin=0.4)
  plain = losses.ldam(logits=x, labels=y, margins=margins, scale=2.0)
  wp, wn = losses.effective_number_weights(num_pos=num_pos, num_total=num_total, beta=0.99)
  weighted = losses.ldam(logits=x, labels=y, margins=margins, scale=2.0, pos_weight=wp, neg_weight=wn)
  assert not np.allclose(plain, weighted)
  for step, expected in ((0, plain), (49, plain), (50, weighted), (99, weighted)):
    np.testing.assert_allclose(fn(x, y, jnp.int32(step)), expected, rtol=1e-6, err_msg=str(step))
  # drw_start >= 1: never re-weighted, and no training length needed.
  never = losses.get_loss_fn(_config(name="ldam", max_margin=0.4, scale=2.0, drw_start=1.0),
                             num_pos=num_pos, num_total=num_total)
  np.testing.assert_allclose(never(x, y, jnp.int32(10**6)), plain, rtol=1e-6)
  with pytest.raises(ValueError, match="num_steps"):
    losses.get_loss_fn(cfg, num_pos=num_pos, num_total=num_total)

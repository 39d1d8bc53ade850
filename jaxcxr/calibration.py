"""Post-hoc calibration of per-class probabilities: temperature and Platt scaling, Brier score, reliability.

Both maps act on the logit z = log(p / (1 - p)) of each class separately and are fitted on validation data
by maximum likelihood:

  * temperature scaling: p' = sigmoid(z / T), one T > 0 per class;
  * Platt scaling: p' = sigmoid(a z + b), with Platt's (1999) smoothed targets (N+ + 1) / (N+ + 2) and
    1 / (N- + 2), which keep the fit finite when validation is separable.

Both are increasing in z (a fitted Platt slope a <= 0 is replaced by the identity for that class), so the
ranking of images, and with it AUROC and AUPRC, is unchanged up to ties of saturated probabilities. A class
without positives or without negatives on validation keeps the identity map.

Everything is NumPy on host arrays; labels > 0.5 are positive, as in `jaxcxr.metrics`.
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxcxr import errors

METHODS = ("none", "temperature", "platt")
# Probabilities are clipped to [EPS, 1 - EPS] before taking logits: float32 sigmoid outputs reach 0 and 1.
EPS = 1e-12
# Temperatures are searched in [1 / T_RANGE, T_RANGE].
T_RANGE = 100.0


class CalibrationError(errors.UserError, ValueError):
  """A calibration method or its input is invalid."""


def probs_to_logits(probs, eps: float = EPS) -> np.ndarray:
  """log(p / (1 - p)) in float64, p clipped to [eps, 1 - eps]."""
  p = np.clip(np.asarray(probs, np.float64), eps, 1.0 - eps)
  return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
  z = np.asarray(z, np.float64)
  out = np.empty_like(z)
  pos = z >= 0
  out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
  ez = np.exp(z[~pos])
  out[~pos] = ez / (1.0 + ez)
  return out


def _binary(labels) -> np.ndarray:
  return np.asarray(labels) > 0.5


# ----------------------------------------------------------------------------
# Scores.
# ----------------------------------------------------------------------------


def brier_score(labels, probs) -> Optional[float]:
  """Mean squared difference between probability and 0/1 label over all entries; None if empty."""
  y, p = _binary(labels).astype(np.float64), np.asarray(probs, np.float64)
  if y.shape != p.shape:
    raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape.")
  return float(np.mean((p - y) ** 2)) if y.size else None


def brier_scores(labels, probs) -> list:
  """Per-class Brier scores of (N, C) arrays: a list of C floats (None where N == 0)."""
  labels, probs = np.asarray(labels), np.asarray(probs)
  return [brier_score(labels[:, c], probs[:, c]) for c in range(labels.shape[1])]


def log_loss(labels, probs, eps: float = EPS) -> Optional[float]:
  """Mean negative log-likelihood (binary cross-entropy) of the probabilities; None if empty."""
  y, p = _binary(labels), np.clip(np.asarray(probs, np.float64), eps, 1.0 - eps)
  if y.shape != p.shape:
    raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape.")
  return float(-np.mean(np.where(y, np.log(p), np.log1p(-p)))) if y.size else None


def reliability_curve(labels, probs, *, num_bins: int = 10):
  """Equal-width bins of predicted probability.

  Returns:
    {'edges' (num_bins + 1,), 'count', 'mean_predicted', 'fraction_positive' (num_bins,), with NaN in the
    last two for empty bins, and 'ece': the expected calibration error sum_b count_b / N
    |fraction_positive_b - mean_predicted_b| (None if there are no samples)}.
  """
  y, p = _binary(labels).ravel().astype(np.float64), np.asarray(probs, np.float64).ravel()
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, num_bins - 1)
  count = np.bincount(idx, minlength=num_bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_p = np.bincount(idx, weights=p, minlength=num_bins) / count
    frac = np.bincount(idx, weights=y, minlength=num_bins) / count
  used = count > 0
  ece = float(np.sum(count[used] * np.abs(frac[used] - mean_p[used])) / y.size) if y.size else None
  return {"edges": edges, "count": count.astype(np.int64), "mean_predicted": mean_p,
          "fraction_positive": frac, "ece": ece}


# ----------------------------------------------------------------------------
# Fitting.
# ----------------------------------------------------------------------------


def _nll_of_scale(z, y, log_t):
  """Mean NLL of sigmoid(z / T) at T = exp(log_t)."""
  u = z * math.exp(-log_t)
  # log(1 + exp(-u)) for positives, log(1 + exp(u)) for negatives.
  return float(np.mean(np.logaddexp(0.0, np.where(y, -u, u))))


def fit_temperature(labels, logits) -> float:
  """The T > 0 minimising the NLL of sigmoid(logits / T) for one class; 1.0 without both label values.

  The NLL is unimodal in log T, which is searched with bounded Brent in [-log T_RANGE, log T_RANGE].
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  y, z = _binary(labels).ravel(), np.asarray(logits, np.float64).ravel()
  if y.shape != z.shape:
    raise ValueError(f"labels {y.shape} and logits {z.shape} differ in shape.")
  if y.all() or not y.any() or not np.any(z):
    return 1.0
  bound = math.log(T_RANGE)
  res = optimize.minimize_scalar(lambda lt: _nll_of_scale(z, y, lt), bounds=(-bound, bound),
                                 method="bounded", options={"xatol": 1e-6})
  return float(math.exp(res.x))


def fit_platt(labels, logits, *, max_iter: int = 100, tol: float = 1e-10):
  """(a, b) of sigmoid(a * logits + b) for one class, by Newton's method with Platt's smoothed targets.

  Returns (1.0, 0.0), the identity, without both label values or if the fitted slope is not positive.
  """
  y, z = _binary(labels).ravel(), np.asarray(logits, np.float64).ravel()
  if y.shape != z.shape:
    raise ValueError(f"labels {y.shape} and logits {z.shape} differ in shape.")
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return 1.0, 0.0
  t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
  x = np.stack([z, np.ones_like(z)], axis=1)

  def nll(theta):
    u = x @ theta
    return float(np.sum(t * np.logaddexp(0.0, -u) + (1.0 - t) * np.logaddexp(0.0, u)))

  # Start from the prior log-odds, as Platt does.
  theta = np.array([0.0, math.log((n_pos + 1.0) / (n_neg + 1.0))])
  f = nll(theta)
  for _ in range(max_iter):
    p = sigmoid(x @ theta)
    grad = x.T @ (p - t)
    hess = (x * (p * (1.0 - p))[:, None]).T @ x + 1e-12 * np.eye(2)
    step = np.linalg.solve(hess, grad)
    scale = 1.0
    while scale > 1e-10:  # Backtracking keeps every step a descent step.
      cand = theta - scale * step
      f_new = nll(cand)
      if f_new <= f:
        break
      scale *= 0.5
    else:
      break
    theta, f_old, f = cand, f, f_new
    if f_old - f <= tol * max(1.0, abs(f)):
      break
  a, b = float(theta[0]), float(theta[1])
  return (a, b) if a > 0 and math.isfinite(a) and math.isfinite(b) else (1.0, 0.0)


@dataclasses.dataclass
class Calibrator:
  """A per-class map p -> sigmoid(slope * logit(p) + intercept); identity for method 'none'."""
  method: str
  slope: np.ndarray  # (C,); 1 / T for temperature scaling.
  intercept: np.ndarray  # (C,); 0 for temperature scaling.

  def apply(self, probs) -> np.ndarray:
    """Calibrated (N, C) probabilities (the input itself, as float64, for method 'none')."""
    probs = np.asarray(probs, np.float64)
    if self.method == "none":
      return probs
    if probs.ndim != 2 or probs.shape[1] != self.slope.size:
      raise ValueError(f"Need (N, {self.slope.size}) probabilities, got {probs.shape}.")
    return sigmoid(probs_to_logits(probs) * self.slope + self.intercept)

  def params(self, classes: Sequence[str]) -> dict:
    """JSON-ready fitted parameters per class: {'temperature'} or {'slope', 'intercept'}."""
    if self.method == "none":
      return {}
    if self.method == "temperature":
      return {name: {"temperature": float(1.0 / self.slope[c])} for c, name in enumerate(classes)}
    return {name: {"slope": float(self.slope[c]), "intercept": float(self.intercept[c])}
            for c, name in enumerate(classes)}


def fit_calibrator(method: str, *, labels, probs) -> Calibrator:
  """Fits `method` ('none', 'temperature', 'platt') per class on (N, C) validation labels and probabilities."""
  if method not in METHODS:
    raise CalibrationError(f"Unknown calibration {method!r}; choose one of {', '.join(METHODS)}.")
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  if labels.ndim != 2 or labels.shape != probs.shape:
    raise CalibrationError(f"Need (N, C) labels and probabilities of equal shape, got {labels.shape} and "
                           f"{probs.shape}.")
  num_classes = labels.shape[1]
  slope, intercept = np.ones(num_classes), np.zeros(num_classes)
  if method != "none":
    z = probs_to_logits(probs)
    for c in range(num_classes):
      if method == "temperature":
        slope[c] = 1.0 / fit_temperature(labels[:, c], z[:, c])
      else:
        slope[c], intercept[c] = fit_platt(labels[:, c], z[:, c])
  return Calibrator(method, slope, intercept)


# ----------------------------------------------------------------------------
# Reliability diagram.
# ----------------------------------------------------------------------------


def plot_reliability(path, *, labels, probs, calibrated=None, class_name: str = "", method: str = "",
                     num_bins: int = 10, title: str = "") -> None:
  """Writes a reliability diagram PNG of one class: fraction positive vs mean predicted probability per
  bin, before (and, if given, after) calibration, with a histogram of the predictions below."""
  fig = Figure(figsize=(7.0, 8.0), dpi=110)
  FigureCanvasAgg(fig)
  ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
  y = _binary(labels).ravel()
  curves = [("uncalibrated", probs, "tab:blue", "o")]
  if calibrated is not None:
    curves.append((f"{method or 'calibrated'}", calibrated, "tab:red", "s"))
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  for label, p, color, marker in curves:
    p = np.asarray(p, np.float64).ravel()
    rc = reliability_curve(y, p, num_bins=num_bins)
    used = rc["count"] > 0
    brier = brier_score(y, p)
    ece = "n/a" if rc["ece"] is None else f"{rc['ece']:.4f}"
    bs = "n/a" if brier is None else f"{brier:.4f}"
    ax.plot(rc["mean_predicted"][used], rc["fraction_positive"][used], marker=marker, color=color, lw=1.5,
            label=f"{label}: Brier {bs}, ECE {ece}")
    hist.hist(p, bins=edges, histtype="step", color=color, lw=1.5, label=label)
  prevalence = float(y.mean()) if y.size else float("nan")
  ax.axhline(prevalence, ls="--", color="black", lw=0.8, label=f"prevalence {prevalence:.4f}")
  ax.set_ylabel("Fraction of positives")
  ax.set_xlim(-0.01, 1.01)
  ax.set_ylim(-0.01, 1.01)
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", fontsize=8)
  ax.set_title(f"Reliability: {class_name} ({y.size} images, {int(y.sum())} positive)"
               + (f"\n{title}" if title else ""))
  hist.set_yscale("log")
  hist.set_xlabel("Predicted probability")
  hist.set_ylabel("Images")
  hist.grid(alpha=0.3)
  fig.savefig(path, bbox_inches="tight")

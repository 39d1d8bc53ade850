"""Oversampling plans: which training images make up each epoch, and how often each one appears.

A plan turns the training labels into, for every epoch e, a list of source indices (with repeats) of one
fixed length, drawn from `np.random.default_rng([seed, e])`. The list is a pure function of (labels,
config, seed, e), so a Grain iterator that only stores its position restores the same stream exactly.

  none            every image once per epoch (optionally fewer No Finding images).
  repeat_factor   image i appears r_i = max(1, sqrt(t / f_c)) times, c its rarest label, f_c the share of
                  images carrying c, t = `threshold` (LVIS, Gupta et al. 2019); fractions are rounded up or
                  down at random.
  target_ratio    images carrying `data.target` make up `ratio` of every epoch; each image at most `cap`
                  times (the epoch shrinks rather than break the cap).
  class_balanced  multi-label class-aware sampling: P(i) proportional to sum over i's labels (No Finding
                  counts as a label) of 1 / n_c, so each class is drawn about equally often; epoch length =
                  the split's size, each image at most `cap` times.

Every plan gives each image an expected count w per epoch; the image then appears floor(w) or ceil(w)
times (fractions rounded by systematic sampling over a shuffled order, so the epoch length is fixed),
never more, which is what keeps the cap exact.
"""

import dataclasses

import numpy as np

from jaxcxr.data import nih

NAMES = ("none", "repeat_factor", "target_ratio", "class_balanced")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Expected per-epoch counts of each source image, and the seed that draws each epoch from them.

  `groups` is a list of (indices, expected counts, number drawn): each group is drawn separately, so
  that its total per epoch is exact (target_ratio draws target and other images as two groups).
  Undersampled No Finding images simply carry an expected count below 1.
  """
  name: str
  groups: tuple
  epoch_length: int
  seed: int

  def epoch(self, e: int) -> np.ndarray:
    """Source indices of epoch `e`, in training order (length `epoch_length`)."""
    rng = np.random.default_rng([self.seed, int(e), 0x5A4D])
    out = [_draw(rng, idx, w, n) for idx, w, n in self.groups]
    out = np.concatenate(out) if out else np.zeros(0, np.int64)
    return out[rng.permutation(len(out))]


def _draw(rng, indices, counts, n):
  """n indices from `indices`, index i appearing floor(c_i) or ceil(c_i) times (c = expected `counts`,
  n = the whole part of their sum): the whole parts are kept, the fractions rounded by systematic sampling
  over a shuffled order, so the total is exact and no index exceeds ceil(c_i)."""
  if n == 0 or len(indices) == 0:
    return np.zeros(0, np.int64)
  indices = np.asarray(indices, np.int64)
  counts = np.asarray(counts, np.float64)
  whole = np.floor(counts + 1e-9)
  frac = np.clip(counts - whole, 0.0, 1.0)
  base = np.repeat(indices, whole.astype(np.int64))
  m = n - len(base)
  if m <= 0 or frac.sum() <= 0:
    return base[:n]
  order = rng.permutation(len(indices))
  edges = np.cumsum(frac[order]) * (m / frac.sum())  # Widths at most frac_i <= 1: at most one extra each.
  edges[-1] = m  # Guards the last edge against rounding.
  extra = indices[order][np.searchsorted(edges, rng.random() + np.arange(m), side="right")]
  return np.concatenate([base, extra])


def _capped(weights, *, total, cap):
  """Scales `weights` to sum to `total` with no entry above `cap` (excess spread over the others)."""
  w = np.asarray(weights, np.float64)
  if total > cap * np.count_nonzero(w) + 1e-9:
    raise ValueError(f"data.sampling.cap={cap} is too small: {np.count_nonzero(w)} images cannot fill "
                     f"{total} draws. Raise the cap.")
  fixed = np.zeros(len(w), bool)
  for _ in range(len(w) + 1):
    free = total - cap * fixed.sum()
    out = np.where(fixed, cap, w / w[~fixed].sum() * free)
    over = (out > cap + 1e-12) & ~fixed
    if not over.any():
      return out
    fixed |= over
  return out


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
  """LVIS repeat factor per image: max over its labels c of max(1, sqrt(t / f_c)); 1 for No Finding."""
  labels = np.asarray(labels) > 0.5
  f = labels.mean(0)
  r_class = np.maximum(1.0, np.sqrt(threshold / np.maximum(f, 1e-12)))
  r = np.where(labels, r_class[None, :], 1.0).max(1, initial=1.0)
  return r


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
  """P(i) proportional to sum over i's labels (No Finding as a 15th) of 1 / n_c; sums to 1."""
  labels = np.asarray(labels) > 0.5
  full = np.concatenate([labels, ~labels.any(1, keepdims=True)], 1)
  n = full.sum(0)
  inv = np.where(n > 0, 1.0 / np.maximum(n, 1), 0.0)
  w = (full * inv).sum(1)
  return w / w.sum()


def make_plan(labels: np.ndarray, sampling, *, target: str, seed: int) -> Plan:
  """The plan of `sampling` (config.data.sampling) for training labels (N, 14) and class `target`."""
  labels = np.asarray(labels) > 0.5
  num = len(labels)
  name = sampling.name
  cap = int(sampling.cap)
  keep_frac = float(sampling.undersample_no_finding)
  if name not in NAMES:
    raise ValueError(f"Unknown data.sampling.name {name!r}; choose one of {', '.join(NAMES)}.")
  if not 0.0 < keep_frac <= 1.0:
    raise ValueError(f"data.sampling.undersample_no_finding must be in (0, 1], got {keep_frac}.")
  if cap < 1:
    raise ValueError(f"data.sampling.cap must be at least 1, got {cap}.")
  # Undersampling: No Finding images get expected count keep_frac (floor(keep_frac * n) of them per epoch).
  finding = labels.any(1)
  base = np.where(finding, 1.0, keep_frac)
  all_idx = np.arange(num)

  # Each plan gives expected per-epoch counts for groups of images.
  if name == "none":
    groups = [(all_idx, base)]
  elif name == "repeat_factor":
    groups = [(all_idx, np.minimum(repeat_factors(labels, float(sampling.threshold)) * base, cap))]
  elif name == "class_balanced":
    w = class_balanced_weights(labels) * base
    groups = [(all_idx, _capped(w, total=base.sum(), cap=cap))]
  else:  # target_ratio
    ratio = float(sampling.ratio)
    if not 0.0 < ratio < 1.0:
      raise ValueError(f"data.sampling.ratio must be in (0, 1), got {ratio}.")
    t = labels[:, nih.CLASSES.index(target)]
    pos, neg = np.flatnonzero(t), np.flatnonzero(~t)
    if not len(pos):
      raise ValueError(f"target_ratio sampling: the training split has no {target} images.")
    others = base[neg].sum()  # Expected non-target images per epoch when each appears (at most) once.
    # The epoch is as long as the other images allow, shortened if the cap limits the target images.
    length = min(others / (1.0 - ratio), cap * len(pos) / ratio)
    groups = [(pos, np.full(len(pos), ratio * length / len(pos))),
              (neg, base[neg] * ((1.0 - ratio) * length / others))]
  # Images with and without a finding are drawn apart, so that undersampling No Finding never changes
  # the others' counts; each group draws the whole part of its expected total.
  split = []
  for idx, counts in groups:
    for part in (finding[idx], ~finding[idx]):
      if part.any():
        split.append((idx[part].astype(np.int64), counts[part], int(np.floor(counts[part].sum() + 1e-6))))
  return Plan(name=name, groups=tuple(split), epoch_length=sum(n for _, _, n in split), seed=int(seed))


def is_identity(sampling) -> bool:
  """True when `sampling` leaves the epoch as 'each image once' (the plain shuffled pipeline)."""
  return sampling.name == "none" and float(sampling.undersample_no_finding) >= 1.0

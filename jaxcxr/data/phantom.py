"""The built-in synthetic ("phantom") chest X-ray dataset, written in the NIH ChestX-ray14 on-disk layout.

`generate` draws patients, follow-up studies and labels, renders one frontal chest radiograph per study and
writes `Data_Entry_2017_v2020.csv`, `images/*.png`, `train_val_list.txt`, `test_list.txt` and finally
`phantom.json`, the marker that the folder is complete. `ensure` reuses a complete folder made with the same
parameters and regenerates an incomplete one.

Labels. Each class c is positive where a latent standard-normal score exceeds the (1 - p_c) quantile, so its
per-image prevalence is p_c exactly in expectation whatever the correlations. The score mixes a per-patient
term (large for chronic findings, which therefore persist across a patient's follow-ups), shared per-patient
terms (general illness; heart failure, linking Cardiomegaly, Effusion and Edema), shared per-study terms
(fluid: Effusion, Atelectasis, Edema; infection: Pneumonia, Infiltration, Consolidation) and noise.

Images. Rendered in canonical body coordinates (x to the image right, y down, the thorax spanning about
[-1, 1]) mapped to pixels by a per-patient pose (shift, rotation, scale) plus per-study jitter, so all
geometry scales with image_size. A projected density map (soft tissue, minus lung air, plus bone and
pathology) becomes intensity by 1 - exp(-k * density), followed by a random exposure window, gamma and noise.
Every finding has its own signature (see `_FINDINGS`); each image draws its pixels from a seed derived from
(seed, patient, follow-up) only, so the files do not depend on the number of worker processes.
"""

import copy
import ctypes
import json
import math
import multiprocessing
import os
import shutil
import statistics
import struct
import sys
import zlib

from absl import logging
import numpy as np
import tqdm

from jaxcxr.data.nih import CLASSES, LABEL_FILE, NO_FINDING, TEST_LIST, TRAIN_VAL_LIST

MARKER = "phantom.json"
IMAGES = "images"
CLEAN_LABEL_FILE = "Data_Entry_clean.csv"  # The label file's format, with the labels as painted (no noise).
BBOX_FILE = "BBox_List_2017.csv"  # NIH's box file format: the painted findings of the test images.
# Bumped whenever the images or labels for given parameters change; part of phantom.json's parameters, so a
# folder written by another version is regenerated (`ensure`), never reused.
GENERATOR_VERSION = 3
_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_INCOMPLETE = ".phantom_incomplete"
_NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")

# Positives per class among the 112,120 images of the real NIH ChestX-ray14 label file (2020 release).
_NIH_IMAGES = 112_120
_NIH_POSITIVES = {
    "Atelectasis": 11_559, "Cardiomegaly": 2_776, "Consolidation": 4_667, "Edema": 2_303,
    "Effusion": 13_317, "Emphysema": 2_516, "Fibrosis": 1_686, "Hernia": 227, "Infiltration": 19_894,
    "Mass": 5_782, "Nodule": 6_331, "Pleural_Thickening": 3_385, "Pneumonia": 1_431, "Pneumothorax": 5_302,
}
# Per-image prevalence of each class, as in NIH ChestX-ray14.
DEFAULT_PREVALENCE = {c: round(_NIH_POSITIVES[c] / _NIH_IMAGES, 4) for c in CLASSES}

# Share of each class's latent variance from: its own patient term, general illness (patient), heart failure
# (patient), fluid (study), infection (study). The rest is per-study noise. Chronic findings put 0.99 on
# patient terms, so they persist across follow-ups (75-87% of the time); acute ones mostly vary between studies.
_VARIANCE_SHARES = {
    #                     own   ill   heart fluid infect
    "Atelectasis":        (0.15, 0.12, 0.00, 0.30, 0.05),
    "Cardiomegaly":       (0.72, 0.07, 0.20, 0.00, 0.00),
    "Consolidation":      (0.15, 0.12, 0.00, 0.05, 0.35),
    "Edema":              (0.10, 0.10, 0.15, 0.35, 0.05),
    "Effusion":           (0.15, 0.12, 0.10, 0.35, 0.00),
    "Emphysema":          (0.87, 0.12, 0.00, 0.00, 0.00),
    "Fibrosis":           (0.87, 0.12, 0.00, 0.00, 0.00),
    "Hernia":             (0.94, 0.05, 0.00, 0.00, 0.00),
    "Infiltration":       (0.15, 0.12, 0.00, 0.10, 0.30),
    "Mass":               (0.55, 0.10, 0.00, 0.00, 0.00),
    "Nodule":             (0.55, 0.10, 0.00, 0.00, 0.00),
    "Pleural_Thickening": (0.84, 0.12, 0.00, 0.03, 0.00),
    "Pneumonia":          (0.10, 0.10, 0.00, 0.05, 0.45),
    "Pneumothorax":       (0.25, 0.05, 0.00, 0.00, 0.00),
}
# Label noise, per finding: (miss, spurious). miss: share of the painted positives written as negative;
# spurious: negatives written as positive, as a share of the expected painted positives (so a rare class
# does not drown in false labels). Report-mined labels miss findings (hedged, "cannot exclude", mentioned
# only in the impression) more often than they invent them, so miss > spurious everywhere; subtle and
# loosely named findings (Infiltration, Pneumonia, Nodule, Pleural_Thickening) get the most noise. These
# are modelling choices, not measured rates. `label_noise` scales both (1 = these rates, 0 = clean labels).
LABEL_NOISE = {
    "Atelectasis": (0.15, 0.08), "Cardiomegaly": (0.08, 0.04), "Consolidation": (0.15, 0.08),
    "Edema": (0.12, 0.06), "Effusion": (0.10, 0.05), "Emphysema": (0.10, 0.04), "Fibrosis": (0.15, 0.06),
    "Hernia": (0.08, 0.03), "Infiltration": (0.20, 0.10), "Mass": (0.10, 0.05), "Nodule": (0.18, 0.08),
    "Pleural_Thickening": (0.18, 0.08), "Pneumonia": (0.20, 0.10), "Pneumothorax": (0.10, 0.05),
}
CHRONIC = ("Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening")
# Studies per patient: 1 to 6, about 2.6 on average.
_STUDIES_P = np.array([0.38, 0.20, 0.14, 0.11, 0.09, 0.08])
# Original NIH image sizes (width, height) and pixel spacings (mm) written into the label file.
_ORIGINAL_SIZES = ((2500, 2048), (2048, 2500), (2992, 2991), (3056, 2544), (2021, 2021), (2500, 2048))
_SPACINGS = (0.143, 0.168, 0.139, 0.171)
_TEST_FRACTION = 0.2283  # NIH: 25,596 of 112,120 images are in the official test list.


# ----------------------------------------------------------------------------------------------------------
# Parameters and labels.
# ----------------------------------------------------------------------------------------------------------


def _resolve_prevalence(prevalence):
  """DEFAULT_PREVALENCE with the entries of `prevalence` replaced; validates names and values."""
  out = dict(DEFAULT_PREVALENCE)
  for name, p in (prevalence or {}).items():
    if p is None:  # Keep the default.
      continue
    if name not in out:
      raise ValueError(f"prevalence: unknown class {name!r}; known: {', '.join(CLASSES)}.")
    p = float(p)
    if not 0.0 <= p < 1.0:
      raise ValueError(f"prevalence[{name!r}] = {p} is not in [0, 1).")
    out[name] = p
  return out


def _params(num_images, image_size, seed, label_noise, prevalence):
  """The canonical, JSON-round-tripped parameter dict stored in phantom.json and compared by `ensure`."""
  num_images, image_size, seed, label_noise = int(num_images), int(image_size), int(seed), float(label_noise)
  if num_images < 1:
    raise ValueError(f"num_images must be >= 1, got {num_images}.")
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16, got {image_size}.")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}.")
  if not 0.0 <= label_noise <= _MAX_NOISE_SCALE:
    raise ValueError(f"label_noise (a scale of the rates in LABEL_NOISE) must be in [0, {_MAX_NOISE_SCALE}], "
                     f"got {label_noise}.")
  params = {"generator_version": GENERATOR_VERSION, "num_images": num_images, "image_size": image_size,
            "seed": seed, "label_noise": label_noise, "prevalence": _resolve_prevalence(prevalence)}
  return json.loads(json.dumps(params))


def _sample_studies(num_images, rng):
  """Patient id (1-based) and follow-up number of each image, patients in order."""
  counts = rng.choice(len(_STUDIES_P), size=num_images, p=_STUDIES_P) + 1
  last = int(np.searchsorted(np.cumsum(counts), num_images))  # The patient whose studies reach num_images.
  counts = counts[:last + 1]
  counts[-1] -= counts.sum() - num_images
  patients = np.repeat(np.arange(1, len(counts) + 1), counts)
  starts = np.repeat(np.cumsum(counts) - counts, counts)
  followups = np.arange(num_images) - starts
  return patients, followups


def _sample_labels(patients, prevalence, rng):
  """(N, 14) bool labels for images of `patients` (sorted, 1-based ids) by the latent-score model above."""
  n = len(patients)
  num_patients = int(patients.max())
  shares = np.asarray([_VARIANCE_SHARES[c] for c in CLASSES])  # (14, 5)
  w = np.sqrt(shares)
  noise_w = np.sqrt(1.0 - shares.sum(1))
  own = rng.standard_normal((num_patients + 1, len(CLASSES)))[patients]
  pat_shared = rng.standard_normal((num_patients + 1, 2))[patients]
  img_shared = rng.standard_normal((n, 2))
  eps = rng.standard_normal((n, len(CLASSES)))
  z = (w[:, 0] * own + pat_shared @ w[:, 1:3].T + img_shared @ w[:, 3:5].T + noise_w * eps)
  p = np.asarray([prevalence[c] for c in CLASSES])
  nd = statistics.NormalDist()
  thresholds = np.asarray([nd.inv_cdf(1.0 - q) if q > 0 else np.inf for q in p])
  return z > thresholds


_MAX_NOISE_SCALE = 4.0


def noise_rates(prevalence, scale=1.0):
  """{class: (P(written negative | positive), P(written positive | negative))} for LABEL_NOISE x scale."""
  out = {}
  for c in CLASSES:
    miss, spurious = LABEL_NOISE[c]
    p = prevalence[c]
    out[c] = (min(1.0, scale * miss), min(1.0, scale * spurious * p / (1.0 - p)) if p < 1.0 else 0.0)
  return out


def _add_label_noise(labels, prevalence, scale, rng):
  """The labels as written: each positive dropped and each negative flipped at `noise_rates`."""
  rates = noise_rates(prevalence, scale)
  miss = np.asarray([rates[c][0] for c in CLASSES])
  spurious = np.asarray([rates[c][1] for c in CLASSES])
  u = rng.random(labels.shape)
  return np.where(labels, u >= miss, u < spurious)


def _patient_split(patients, rng):
  """Boolean test mask: whole patients, in random order, go to test until ~22.8% of images are there."""
  ids, counts = np.unique(patients, return_counts=True)
  order = rng.permutation(len(ids))
  target = _TEST_FRACTION * len(patients)
  test_ids, total = [], 0
  for i in order:
    if total >= target:
      break
    if total + counts[i] > target + counts[i] / 2 and test_ids:
      continue  # Overshoots; a smaller patient may fit better.
    test_ids.append(ids[i])
    total += counts[i]
  return np.isin(patients, test_ids)


# ----------------------------------------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------------------------------------


def _sig(z):
  """Ramp from 0 to 1 around z = 0 over |z| < 1.5 (z in units of the edge softness, like 0.5 + tanh(z) / 2)."""
  t = z * (1.0 / 3.0)
  t += 0.5
  np.minimum(t, 1.0, out=t)
  return np.maximum(t, 0.0, out=t)


def _atan2(y, x):
  """atan2 to within 0.005 rad, several times faster than np.arctan2 on small float32 arrays."""
  ax, ay = np.abs(x), np.abs(y)
  steep = ay > ax
  a = np.minimum(ax, ay) / (np.maximum(ax, ay) + 1e-12)
  t = a * (0.7854 + 0.273 * (1.0 - a))
  t = np.where(steep, 1.5707964 - t, t)
  t = np.where(x < 0, 3.1415927 - t, t)
  return np.where(y < 0, -t, t)


# Small separable linear interpolations are done with gathers, not matrix products: tiny BLAS calls are slow,
# and a multithreaded BLAS spins its threads against the worker processes.
_LERP_CACHE = {}


def _lerp_index(n_in, n_out, periodic=False, centres=True):
  """Indices (lo, hi) and weights of linear interpolation from n_in control points to n_out positions.

  centres: the outputs are pixel centres spanning the inputs' range; otherwise they start on the first input
  and step by n_in / n_out (periodic) or (n_in - 1) / (n_out - 1).
  """
  key = (n_in, n_out, periodic, centres)
  if key not in _LERP_CACHE:
    if centres:
      pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    else:
      pos = np.arange(n_out) * (n_in / n_out if periodic else (n_in - 1) / (n_out - 1))
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - (1 if periodic else 2))
    hi = (lo + 1) % n_in
    _LERP_CACHE[key] = lo, hi, (pos - lo).astype(np.float32)
  return _LERP_CACHE[key]


def _upsample(g, rows, cols):
  """Linearly interpolates the last two axes of g with _lerp_index results `rows` and `cols`."""
  lo, hi, f = rows
  g = g[..., lo, :] * (1.0 - f)[:, None] + g[..., hi, :] * f[:, None]
  lo, hi, f = cols
  return g[..., lo] * (1.0 - f) + g[..., hi] * f


def _smooth_noise(rng, size, grid):
  """Unit-variance-ish smooth random field on the pixel grid with about `grid` features across the image."""
  g = rng.standard_normal((grid + 1, grid + 1), np.float32) * np.float32(1.35)
  index = _lerp_index(grid + 1, size)
  return _upsample(g, index, index)


# Per-patient anatomy: name -> (low, high) of a uniform draw, in canonical units (x to the image right, y down,
# the thorax spanning about [-1, 1]; "u" is the outward distance from the midline).
_ANATOMY_RANGES = {
    "scale": (0.90, 1.00),
    "dx": (-0.06, 0.06), "dy": (-0.06, 0.04), "rot": (-0.06, 0.06),  # Position in the film.
    "body_w": (0.80, 0.90), "shoulder_y": (-0.70, -0.60), "neck_w": (0.16, 0.21), "arm_gap": (0.03, 0.12),
    "tissue": (0.90, 1.10),
    "lung_cu": (0.32, 0.36),  # Apex of the lung (u).
    "lung_yc": (-0.08, 0.0),  # Where the apical half-ellipse meets the straight sides.
    "apex_h": (0.56, 0.64),
    "lung_wl": (0.38, 0.42), "lung_wm": (0.20, 0.23),  # Lateral and medial half widths at lung_yc.
    "flare": (0.02, 0.05),  # Extra lateral width at the base.
    "dome_y": (0.26, 0.34), "dome_h": (0.20, 0.28),
    "dome_left": (0.02, 0.06),  # The left hemidiaphragm (image right) sits lower.
    "heart_x": (0.07, 0.11), "heart_y": (0.25, 0.30), "heart_w": (0.30, 0.34), "heart_h": (0.20, 0.24),
    "heart_rot": (0.35, 0.55),  # Long axis tilted down towards the apex (image right).
    "gastric_p": (0.0, 1.0), "gastric_r": (0.05, 0.11),  # Stomach bubble under the left hemidiaphragm,
    "gastric_dx": (-0.12, 0.12),  # its offset from below the lung's apex (u).
    "rib_sp": (0.100, 0.118), "rib_phase": (0.0, 1.0), "rib_amp": (0.05, 0.075),
    "air": (0.62, 0.70),
    "breast_r": (0.30, 0.38),
    # Normal variants that mimic findings (look-alikes, never labelled; see LOOK_ALIKES). *_p draws presence.
    # Pericardial fat pad at the cardiophrenic angle (Hernia, Cardiomegaly): a fuzzy soft-tissue density.
    "fat_pad_p": (0.0, 1.0), "fat_pad": (0.18, 0.40), "fat_pad_x": (-0.04, 0.18), "fat_pad_r": (0.07, 0.13),
    "fat_pad_up": (0.3, 1.1),
    # Medial border of the scapula projected over the upper lateral lung (Pneumothorax).
    "scap_p": (0.0, 1.0), "scap_u": (0.50, 0.62), "scap_tilt": (0.10, 0.35), "scap_amp": (0.04, 0.08),
    # Minor fissure (Atelectasis), nipple shadows (Nodule, Mass), extrapleural companion stripe (Pleural_Thickening).
    "fissure_p": (0.0, 1.0), "fissure_y": (-0.06, 0.06),
    "nipple_p": (0.0, 1.0), "nipple_u": (0.40, 0.52), "nipple_y": (0.10, 0.26),
    "stripe_p": (0.0, 1.0),
}
# How often each look-alike appears (per patient, or per study where marked), whatever the labels.
_LOOK_ALIKE_RATES = {
    "gastric_bubble": 0.70,  # Patients whose stomach shows air; 85% of their studies show it (per study).
    "fat_pad": 0.35,
    "retrocardiac_air": 0.25,  # Per study, patients without a fat pad: air in the oesophagus or a high fundus.
    "scapular_edge": 0.50,
    "skin_fold": 0.12,  # Per study, PA; 0.30 on AP films (patient lying on a cassette).
    "end_on_vessels": 1.0,  # Every film: 1-4 dots near the hila (per study).
    "minor_fissure": 0.50,
    "nipple_shadows": 0.30,
    "companion_stripe": 0.30,
    "expiration": 0.12,  # Per study: a poor inspiration raises the diaphragm and broadens the heart.
}
# What each finding can be mistaken for (documentation; the painters and _render_batch draw them).
LOOK_ALIKES = {
    "Atelectasis": ("minor_fissure", "expiration"),
    "Cardiomegaly": ("fat_pad", "expiration", "AP projection"),
    "Consolidation": ("breast shadows", "end_on_vessels"),
    "Edema": ("expiration", "AP projection", "exposure"),
    "Effusion": ("breast shadows", "expiration"),
    "Emphysema": ("exposure", "deep inspiration"),
    "Fibrosis": ("vessel markings", "end_on_vessels"),
    "Hernia": ("gastric_bubble", "fat_pad", "retrocardiac_air"),
    "Infiltration": ("breast shadows", "vessel markings"),
    "Mass": ("nipple_shadows", "fat_pad"),
    "Nodule": ("end_on_vessels", "nipple_shadows"),
    "Pleural_Thickening": ("companion_stripe",),
    "Pneumonia": ("breast shadows", "expiration"),
    "Pneumothorax": ("skin_fold", "scapular_edge", "Emphysema bullae"),
}
_ANATOMY_LOW = np.array([lo for lo, _ in _ANATOMY_RANGES.values()])
_ANATOMY_SPAN = np.array([hi - lo for lo, hi in _ANATOMY_RANGES.values()])


class _Anatomy:
  """Per-patient anatomy and pose (canonical units); `_study_setup` adds per-study jitter and findings."""

  def __init__(self, rng, female):
    values = (_ANATOMY_LOW + _ANATOMY_SPAN * rng.random(len(_ANATOMY_RANGES))).tolist()
    self.__dict__.update(zip(_ANATOMY_RANGES, values))
    self.female = female
    if female:
      self.body_w *= 0.96
    else:
      self.breast_r = 0.0
    self.gastric = self.gastric_p < _LOOK_ALIKE_RATES["gastric_bubble"]
    if self.fat_pad_p >= _LOOK_ALIKE_RATES["fat_pad"]:
      self.fat_pad = 0.0
    if self.scap_p >= _LOOK_ALIKE_RATES["scapular_edge"]:
      self.scap_amp = 0.0
    self.fissure = 0.05 if self.fissure_p < _LOOK_ALIKE_RATES["minor_fissure"] else 0.0
    self.nipple = 0.10 if self.nipple_p < _LOOK_ALIKE_RATES["nipple_shadows"] else 0.0
    self.stripe = 0.06 if self.stripe_p < _LOOK_ALIKE_RATES["companion_stripe"] else 0.0
    # Vessel fields: control points in (radius, angle) about each hilum (image left, image right) of the
    # main trunks (real part, coarse) and their branches (imaginary part), one grid for a single look-up.
    trunks = rng.standard_normal((2, 5, 36), np.float32)
    trunks = _upsample(trunks, _lerp_index(5, 8, centres=False), _lerp_index(36, 72, periodic=True, centres=False))
    self.vessels = (trunks + 1j * rng.standard_normal((2, 8, 72), np.float32)).astype(np.complex64)


def _lung_d(u, y, a):
  """Signed distance (> 0 inside, canonical units) to a lung's outline, the diaphragm aside.

  u is the outward coordinate (|x| on the lung's side). The lung is a half-ellipse apex on straight sides
  whose lateral border flares towards the base.
  """
  du = u - a.lung_cu
  t = np.clip((y - a.lung_yc) / 0.6, 0.0, 1.0)
  w = np.where(du > 0, a.lung_wl + a.flare * t, a.lung_wm)
  dy = np.minimum(y - a.lung_yc, 0.0) / a.apex_h
  r = np.sqrt((du / w) ** 2 + dy * dy)
  return (1.0 - r) * np.minimum(w, a.apex_h)


def _dome(u, a, side):
  """y of the diaphragm dome at outward coordinate u on `side` (-1 = patient's right = image left)."""
  return a.dome_y + (a.dome_left if side > 0 else 0.0) + a.dome_h * ((u - 0.38) / 0.40) ** 2


def _disk(x, y, cx, cy, r, soft):
  d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
  return _sig((r - d) / soft)


def _polar_field(grids, which, r, theta, r_max):
  """Bilinear look-up of complex grids[which] ((m, radial, angular), periodic in angle) at (r, theta)."""
  _, nr, na = grids.shape
  fr = np.minimum(r * np.float32((nr - 1) / r_max), np.float32(nr - 1.001))
  fa = (theta * np.float32(0.5 / np.pi) + np.float32(1.0)) * np.float32(na)
  fr0, fa0 = np.floor(fr), np.floor(fa)
  wr, wa = fr - fr0, fa - fa0
  j0 = fa0.astype(np.int32) % na
  j1 = j0 + 1
  j1[j1 == na] = 0
  base = which.astype(np.int32) * (nr * na) + fr0.astype(np.int32) * na
  flat = grids.reshape(-1)
  top = flat.take(base + j0) * (1 - wa) + flat.take(base + j1) * wa
  base += na
  bottom = flat.take(base + j0) * (1 - wa) + flat.take(base + j1) * wa
  return top * (1 - wr) + bottom * wr


class _Ctx:
  """What the finding painters read and write for one image."""

  def __init__(self, x, y, a, rng, soft, size):
    self.x, self.y, self.a, self.rng, self.soft, self.size = x, y, a, rng, soft, size
    self.add = np.zeros_like(x)  # Extra density (solid tissue, fluid) seen through everything.
    self.opac = np.zeros_like(x)  # Fraction of lung air replaced (airspace disease), as 1 - prod(1 - o).
    self.air_gain = np.ones_like(x)  # Multiplies lung air (hyperlucency).
    self.vessel_gain = np.ones_like(x)
    self.rib_gain = np.ones_like(x)

  def opacify(self, o):
    self.opac = 1.0 - (1.0 - self.opac) * (1.0 - np.clip(o, 0.0, 1.0))

  def u(self, side):
    return side * self.x

  def noise(self, grid):
    return _smooth_noise(self.rng, self.size, grid)


def _lung_point(g, a, side, y_range=(-0.40, 0.22), avoid_heart=True, margin=0.1):
  """A random point (x, y) inside the lung on `side`, at least `margin` from its outline."""
  y = g.uniform(*y_range)
  t = min(max((y - a.lung_yc) / 0.6, 0.0), 1.0)
  dy = min(y - a.lung_yc, 0.0) / a.apex_h
  half = math.sqrt(max(1.0 - dy * dy, 0.05))
  lo = a.lung_cu - max(a.lung_wm * half - margin, 0.02)
  hi = a.lung_cu + max((a.lung_wl + a.flare * t) * half - margin, 0.02)
  if side > 0 and avoid_heart and y > a.heart_y - a.heart_h - 0.05:
    lo = max(lo, min(hi - 0.02, a.heart_x + a.heart_w + 0.03))
  return float(side * g.uniform(lo, hi)), float(y)


# Finding painters. Each gets the context, the lung masks ({-1, 1} -> mask), the patient-level generator `g`
# (geometry that persists across a patient's follow-ups) and the per-image strength `s` (about 1).


def _paint_atelectasis(c, lungs, g, s):
  side = -1 if g.random() < 0.55 else 1
  x, y = c.x, c.y
  edge = c.soft + 0.012
  if g.random() < 0.6:  # Plate-like band in the lower zone.
    cx, cy = _lung_point(g, c.a, side, (0.0, 0.22), margin=0.14)
    ang = g.uniform(-0.35, 0.35) * side
    half_len, half_th = g.uniform(0.14, 0.22), g.uniform(0.030, 0.045) * (0.8 + 0.2 * s)
    dx, dy = x - cx, y - cy
    along = dx * math.cos(ang) + dy * math.sin(ang)
    across = -dx * math.sin(ang) + dy * math.cos(ang)
    taper = np.clip(1.0 - (along / half_len) ** 2, 0.0, 1.0)
    band = _sig((half_th * taper - np.abs(across)) / edge)
  else:  # Collapsed segment: a dense wedge based on the pleura, pointing at the hilum.
    hx, hy = side * 0.20, c.a.lung_yc + 0.28
    theta0 = g.uniform(0.3, 1.0)  # Down and outwards.
    r = np.sqrt((x - hx) ** 2 + (y - hy) ** 2)
    theta = _atan2(y - hy, side * (x - hx))
    half_ang = g.uniform(0.16, 0.24) * (0.8 + 0.2 * s)
    band = _sig((half_ang - np.abs(theta - theta0)) * r / edge) * _sig((r - 0.10) / 0.03)
  band = band * lungs[side]
  c.opacify(band * min(0.95, 0.80 * s))
  c.add += 0.05 * band * s


def _paint_cardiomegaly(c, lungs, g, s):
  pass  # Drawn as a larger heart in _render.


def _paint_consolidation(c, lungs, g, s):
  side = -1 if g.random() < 0.55 else 1
  cx, cy = _lung_point(g, c.a, side, (-0.35, 0.25), margin=0.08)
  rx, ry = g.uniform(0.12, 0.18), g.uniform(0.13, 0.20)
  blob = np.exp(-(((c.x - cx) / rx) ** 2 + ((c.y - cy) / ry) ** 2) ** 1.5)
  patches = np.clip(0.65 + 0.6 * c.noise(16), 0.0, 1.0)
  o = blob * patches * lungs[side]
  c.opacify(o * min(0.95, 0.85 * s))
  c.add += 0.05 * o * s


def _paint_edema(c, lungs, g, s):
  both = lungs[-1] + lungs[1]
  hy = c.a.lung_yc + 0.30
  haze = (np.exp(-(((np.abs(c.x) - 0.18) / 0.26) ** 2 + ((c.y - hy) / 0.32) ** 2))
          * (0.8 + 0.2 * c.noise(10)))
  c.opacify(haze * both * 0.60 * s)
  # Kerley B lines: short horizontal lines at the lateral lung bases.
  kb = _sig((np.abs(c.x) - c.a.lung_cu - 0.12) / 0.03) * _sig((c.y - 0.10) / 0.04)
  lines = _sig((np.cos(2 * np.pi * c.y / 0.05) - 0.8) / 0.1)
  c.add += 0.06 * kb * lines * both * s


def _paint_effusion(c, lungs, g, s):
  r = g.random()
  sides = (-1,) if r < 0.45 else (1,) if r < 0.75 else (-1, 1)
  for side in sides:
    u = c.u(side)
    angle_y = _dome(c.a.lung_cu + c.a.lung_wl + c.a.flare * 0.8, c.a, side)  # y of the costophrenic angle.
    height = g.uniform(0.12, 0.30) * (0.7 + 0.3 * s)
    meniscus = g.uniform(0.10, 0.18)
    rise = np.clip((u - 0.15) / (c.a.lung_cu + c.a.lung_wl - 0.15), 0.0, 1.1) ** 3
    level = angle_y - height - meniscus * rise + meniscus * 0.3
    fluid = _sig((c.y - level) / (c.soft + 0.02)) * lungs[side]
    c.opacify(fluid * 0.97)
    c.add += 0.08 * fluid * _sig((c.y - level - 0.06) / 0.05)


def _paint_emphysema(c, lungs, g, s):
  both = lungs[-1] + lungs[1]
  c.air_gain = c.air_gain * (1.0 + (0.20 + 0.08 * g.random()) * s * both)
  periph = np.clip((np.abs(c.x) - 0.25) / 0.3, 0.0, 1.0)
  c.vessel_gain = c.vessel_gain * (1.0 - 0.75 * periph)
  if g.random() < 0.5:  # An apical bulla: a vessel-free lucency with a hairline wall.
    side = -1 if g.random() < 0.5 else 1
    cx, cy = side * g.uniform(0.36, 0.48), g.uniform(-0.55, -0.40)
    rb = g.uniform(0.07, 0.11)
    b = _disk(c.x, c.y, cx, cy, rb, c.soft + 0.004) * lungs[side]
    c.air_gain = c.air_gain * (1.0 + 0.15 * b)
    c.vessel_gain = c.vessel_gain * (1.0 - b)


def _paint_fibrosis(c, lungs, g, s):
  both = lungs[-1] + lungs[1]
  weight = np.clip(np.clip((np.abs(c.x) - 0.30) / 0.30, 0, 1) * 0.6 + _sig((c.y - 0.0) / 0.12) * 0.8, 0, 1)
  grid = int(np.clip(c.size / 3.5, 16, 40))
  n1, n2 = c.noise(grid), c.noise(grid)
  net = np.maximum(np.exp(-(n1 / 0.22) ** 2), np.exp(-(n2 / 0.22) ** 2)) * weight * both  # Crossing lines.
  c.opacify(net * 0.50 * s)
  c.add += 0.04 * net * s
  c.air_gain = c.air_gain * (1.0 - 0.08 * weight * both)


def _paint_hernia(c, lungs, g, s):
  # Hiatal hernia: stomach pushed up through the hiatus behind the heart. A round soft-tissue sac above the
  # medial left hemidiaphragm, always with an air cap whose flat lower edge is an air-fluid level. Its
  # look-alikes carry one half each: a pericardial fat pad (density, no air, fuzzy) and retrocardiac air
  # (lucent, no sac, no level); the gastric bubble sits below the dome. Place, size, shape, how far the sac
  # rises and how much air it holds vary per patient; contrast per study.
  a = c.a
  r = g.uniform(0.10, 0.16)
  aspect = g.uniform(0.8, 1.25)
  rx, ry = r * aspect, r / aspect
  cx = g.uniform(-0.06, 0.16)
  cy = _dome(0.25, a, 1) - ry * g.uniform(0.7, 1.3)
  edge = c.soft + 0.008
  d = np.sqrt(((c.x - cx) / rx) ** 2 + ((c.y - cy) / ry) ** 2)
  sac = _sig((1.0 - d) * ry / edge)
  c.add += g.uniform(0.14, 0.28) * s * sac
  level = cy - ry + 2.0 * ry * g.uniform(0.35, 0.60)
  bubble = sac * _sig((level - c.y) / edge) * _sig((0.8 - d) * ry / edge)
  c.add -= g.uniform(0.45, 0.60) * s * bubble


def _paint_infiltration(c, lungs, g, s):
  r = g.random()
  sides = (-1,) if r < 0.35 else (1,) if r < 0.6 else (-1, 1)
  haze = np.zeros_like(c.x)
  for side in sides:
    cx, cy = _lung_point(g, c.a, side, (-0.3, 0.2), avoid_heart=False)
    rad = g.uniform(0.25, 0.38)
    haze = haze + np.exp(-((c.x - cx) ** 2 + ((c.y - cy) * 0.8) ** 2) / rad ** 2) * lungs[side]
  texture = np.clip(0.55 + 0.5 * c.noise(24), 0.0, 1.0)
  c.opacify(np.clip(haze, 0, 1) * texture * 0.50 * s)


def _paint_mass(c, lungs, g, s):
  side = -1 if g.random() < 0.5 else 1
  cx, cy = _lung_point(g, c.a, side, (-0.40, 0.15), margin=0.10)
  r = g.uniform(0.10, 0.15) * (0.9 + 0.1 * s)
  theta = _atan2(c.y - cy, c.x - cx)
  lob = 1.0 + 0.10 * np.sin(3 * theta + g.uniform(0, 6.3)) + 0.05 * np.sin(5 * theta + g.uniform(0, 6.3))
  d = np.sqrt((c.x - cx) ** 2 + (c.y - cy) ** 2)
  m = _sig((r * lob - d) / (c.soft + 0.012))
  c.add += (0.10 + 0.04 * s) * m * np.sqrt(np.clip(1.0 - (d / (r * lob)) ** 2, 0.0, 1.0))
  c.opacify(m * 0.9)


def _paint_nodule(c, lungs, g, s):
  side = -1 if g.random() < 0.5 else 1
  cx, cy = _lung_point(g, c.a, side, (-0.45, 0.20), margin=0.06)
  r = g.uniform(0.040, 0.055)
  m = _disk(c.x, c.y, cx, cy, r, c.soft * 0.8 + 0.004)
  c.add += (0.08 + 0.04 * s) * m
  c.opacify(m * 0.9)


def _paint_pleural_thickening(c, lungs, g, s):
  r = g.random()
  sides = (-1,) if r < 0.4 else (1,) if r < 0.7 else (-1, 1)
  apical = g.random() < 0.5
  for side in sides:
    u = c.u(side)
    th = g.uniform(0.035, 0.055) * (0.8 + 0.2 * s)
    d = _lung_d(u, c.y, c.a)
    band = _sig((th - d) / (c.soft + 0.006)) * lungs[side]
    where = _sig((u - c.a.lung_cu - 0.05) / 0.04) * _sig((0.35 - c.y) / 0.1)
    if apical:
      where = np.maximum(where, _sig((c.a.lung_yc - 0.12 - c.y) / 0.04))
    band = band * where
    c.opacify(band * 0.95)
    c.add += 0.08 * band


def _paint_pneumonia(c, lungs, g, s):
  side = -1 if g.random() < 0.6 else 1
  u, y = c.u(side), c.y
  lobe = g.integers(3) if side < 0 else 2 * g.integers(2)  # 0 upper, 1 middle (right only), 2 lower.
  edge = c.soft + 0.006
  if lobe == 0:  # Upper lobe, sharp lower border at the horizontal fissure.
    fissure = c.a.lung_yc + g.uniform(-0.08, 0.02) + 0.05 * (u - 0.4)
    region = _sig((fissure - y) / edge)
  elif lobe == 1:  # Middle lobe: below the horizontal fissure, against the heart border, fading downwards.
    fissure = c.a.lung_yc + g.uniform(-0.05, 0.03)
    region = _sig((y - fissure) / edge) * _sig((fissure + 0.32 - y) / 0.07) * _sig((0.50 - u) / 0.06)
  else:  # Lower lobe: basal, fading upwards.
    top = g.uniform(-0.05, 0.10)
    region = _sig((y - top) / 0.07)
  o = region * lungs[side] * (0.85 + 0.12 * np.clip(c.noise(8), -1, 1))
  c.opacify(o * min(0.95, 0.85 * s))
  c.add += 0.04 * o


def _paint_pneumothorax(c, lungs, g, s):
  pass  # Drawn in _render, as it reshapes the lung.


_FINDINGS = {
    "Atelectasis": _paint_atelectasis, "Cardiomegaly": _paint_cardiomegaly,
    "Consolidation": _paint_consolidation, "Edema": _paint_edema, "Effusion": _paint_effusion,
    "Emphysema": _paint_emphysema, "Fibrosis": _paint_fibrosis, "Hernia": _paint_hernia,
    "Infiltration": _paint_infiltration, "Mass": _paint_mass, "Nodule": _paint_nodule,
    "Pleural_Thickening": _paint_pleural_thickening, "Pneumonia": _paint_pneumonia,
    "Pneumothorax": _paint_pneumothorax,
}
# Paint order: opacities that hide others come last.
_PAINT_ORDER = ("Emphysema", "Fibrosis", "Edema", "Infiltration", "Consolidation", "Pneumonia",
                "Atelectasis", "Nodule", "Mass", "Pleural_Thickening", "Effusion", "Hernia")
# Findings whose test images get a ground-truth box (BBOX_FILE): those with a local signature. NIH boxes
# eight classes; Edema, Emphysema, Fibrosis and Pleural_Thickening are diffuse or bilateral here.
BOXED = ("Atelectasis", "Cardiomegaly", "Consolidation", "Effusion", "Hernia", "Infiltration", "Mass", "Nodule",
         "Pneumonia", "Pneumothorax")


class _Batch:
  """Per-study parameters of a batch as (n, 1, 1) float32 arrays, named like _Anatomy's fields."""

  def __init__(self, anatomies, names):
    n = len(anatomies)
    for name in names:
      setattr(self, name, np.array([getattr(a, name) for a in anatomies], np.float32).reshape(n, 1, 1))


_ANATOMY_CACHE = {}


def _study_setup(size, seed, patient, followup, labels, female, ap):
  """The scalar part of rendering one study: anatomy after findings and pose, generators, exposure, noise."""
  labels = frozenset(labels)
  key = (seed, patient, female)
  if _ANATOMY_CACHE.get("key") != key:  # Follow-ups of a patient are rendered one after another.
    _ANATOMY_CACHE.update(key=key, anatomy=_Anatomy(np.random.default_rng((seed, 1, patient)), female))
  a = copy.copy(_ANATOMY_CACHE["anatomy"])
  rng = np.random.default_rng((seed, 3, patient, followup))
  # Finding geometry persists across a patient's studies; strength and texture vary per study. Each finding
  # has its own generators, so adding a label changes only that finding's pixels.
  a.finding_rng = {c: np.random.default_rng((seed, 2, patient, i)) for i, c in enumerate(CLASSES) if c in labels}
  a.study_rng = {c: np.random.default_rng((seed, 4, patient, followup, i)) for i, c in enumerate(CLASSES)
                 if c in labels}
  a.strength = {c: float(np.clip(g.normal(1.0, 0.18), 0.65, 1.35)) for c, g in a.study_rng.items()}
  a.labels = labels

  # Pose: the patient's own plus per-study jitter; AP films are a little magnified and less inspired.
  jitter = rng.standard_normal(5).tolist()
  scale = a.scale * (1.0 + 0.015 * jitter[0]) * (1.04 if ap else 1.0)
  rot = a.rot + 0.015 * jitter[1]
  a.cr, a.sr = math.cos(rot) / scale, math.sin(rot) / scale
  a.dx, a.dy = a.dx + 0.015 * jitter[2], a.dy + 0.015 * jitter[3]
  a.soft = 1.0 / (size * scale)  # Half a pixel in canonical units.
  a.dome_y += 0.025 * jitter[4] - (0.04 if ap else 0.0)
  heart_scale = 1.06 if ap else 1.0
  if "Cardiomegaly" in labels:
    s = a.strength["Cardiomegaly"]
    heart_scale *= 1.0 + (0.28 + 0.12 * a.finding_rng["Cardiomegaly"].random()) * (0.6 + 0.4 * s)
  if "Emphysema" in labels:  # Hyperinflation: taller lungs, low flat diaphragm, narrow heart.
    a.apex_h += 0.04
    a.dome_y += 0.13
    a.dome_h *= 0.3
    a.rib_sp *= 1.08
    heart_scale *= 0.88
  a.raise_r = a.raise_l = 0.0
  if "Atelectasis" in labels:  # Volume loss lifts the hemidiaphragm a little (same side as the painter's).
    if a.finding_rng["Atelectasis"].random() < 0.55:
      a.raise_r = 0.04
    else:
      a.raise_l = 0.04
    a.finding_rng["Atelectasis"] = np.random.default_rng((seed, 2, patient, CLASSES.index("Atelectasis")))
  a.hw, a.hh = a.heart_w * heart_scale, a.heart_h * (1 + 0.5 * (heart_scale - 1))
  a.hx = a.heart_x + 0.45 * (a.hw - a.heart_w)
  a.hy = a.heart_y + 0.3 * (a.hh - a.heart_h)
  a.clav_top = a.shoulder_y + 0.13 - (0.05 if ap else 0.0)
  a.is_female = 1.0 if female else 0.0
  # Look-alikes that change between studies, from their own generator (independent of the labels).
  la = np.random.default_rng((seed, 5, patient, followup))
  d = la.random(16).tolist()
  if d[0] < _LOOK_ALIKE_RATES["expiration"]:
    a.dome_y -= 0.06
    a.hw, a.hh = a.hw * 1.06, a.hh * 1.03
  a.gastric_amp = (0.12 + 0.20 * d[1]) if a.gastric and d[2] < 0.85 else 0.0
  gu = a.lung_cu + a.gastric_dx
  a.gastric_x, a.gastric_y = gu, _dome(gu, a, 1) + a.gastric_r * (0.6 + 0.6 * d[3]) + 0.02
  a.fat_y = _dome(0.25, a, 1) - a.fat_pad_up * a.fat_pad_r
  # Retrocardiac air only where no fat pad lies: each look-alike carries one half of a hernia's signature
  # (density, air), never both at one place.
  a.rc_amp = (0.20 + 0.25 * d[4]) if d[5] < _LOOK_ALIKE_RATES["retrocardiac_air"] and not a.fat_pad else 0.0
  a.rc_r = 0.05 + 0.06 * d[6]
  a.rc_x, a.rc_y = -0.06 + 0.22 * d[7], _dome(0.25, a, 1) - a.rc_r * (0.8 + 2.0 * d[8])
  fold_rate = _LOOK_ALIKE_RATES["skin_fold"] * (2.5 if ap else 1.0)
  a.fold_amp = (0.05 + 0.05 * d[9]) if d[10] < fold_rate else 0.0
  a.fold_side = -1.0 if d[11] < 0.5 else 1.0
  a.fold_u = a.lung_cu + 0.15 + 0.25 * d[12]  # Where the fold crosses y = 0 (outward coordinate).
  a.grad_x, a.grad_y = 0.12 * (d[13] - 0.5), 0.12 * (d[14] - 0.5)  # Heel effect and uneven thickness.
  dots = la.random((4, 4))
  a.dot_x = ((0.20 + 0.22 * dots[:, 0]) * np.where(dots[:, 1] < 0.5, -1, 1)).astype(np.float32)
  a.dot_y = (a.lung_yc - 0.15 + 0.40 * dots[:, 2]).astype(np.float32)
  a.dot_amp = np.where(np.arange(4) < 1 + int(dots[0, 3] * 4), 0.08 + 0.06 * dots[:, 3], 0.0).astype(np.float32)

  # Exposure, in this order from the study's generator: low-frequency mottle, response, window, gamma, noise.
  a.mottle = rng.standard_normal((9, 9), np.float32)
  a.k = rng.uniform(0.75, 1.05)
  a.top = 1.0 - math.exp(-a.k * 1.6)
  a.lo = rng.uniform(-0.05, 0.04) * a.top
  a.hi = a.top * rng.uniform(0.92, 1.06)
  a.gamma = rng.uniform(0.85, 1.25)
  a.quantum = rng.standard_normal((size, size), np.float32) * rng.uniform(0.008, 0.02)
  return a


_BATCH_FIELDS = tuple(_ANATOMY_RANGES) + (
    "cr", "sr", "soft", "raise_r", "raise_l", "hw", "hh", "hx", "hy", "clav_top", "is_female", "gastric_amp",
    "fat_y", "gastric_x", "gastric_y", "k", "lo", "hi", "gamma", "fissure", "nipple", "stripe", "rc_amp", "rc_r",
    "rc_x", "rc_y", "fold_amp", "fold_side", "fold_u", "grad_x", "grad_y")
_BATCH_PIXELS = 1 << 15  # Pixels rendered at once (8 images of 64 x 64): larger batches spill the CPU caches.


def _render_batch(size, seed, studies, with_boxes=False):
  """(n, size, size) uint8 radiographs of `studies`, a list of (patient, followup, labels, female, ap).

  The scalar set-up is per study; the anatomy is computed for the whole batch at once, with per-study
  parameters as (n, 1, 1) arrays; findings are painted per study. Each study's pixels depend only on its
  own generators, not on which other studies share the batch.
  """
  anats = [_study_setup(size, seed, *study) for study in studies]
  p = _Batch(anats, _BATCH_FIELDS)

  # Canonical coordinates of the pixel centres: x = cr (px - dx) + sr (py - dy), y = cr (py - dy) - sr (px - dx).
  px = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
  gx, gy = px[None, None, :] - p.dx, px[None, :, None] - p.dy
  x = p.cr * gx + p.sr * gy
  y = p.cr * gy - p.sr * gx
  soft = p.soft
  ax = np.abs(x)
  right = x > 0

  # Body: neck, rounded shoulders, chest, upper abdomen; projected thickness of an elliptic cylinder.
  t = np.clip((y - p.shoulder_y + 0.36) / 0.36, 0.0, 1.0)
  bw = (p.neck_w + (p.body_w - p.neck_w) * np.sqrt(1.0 - (1.0 - t) ** 2)
        - 0.05 * np.clip((y - p.shoulder_y) / 0.9, 0.0, 1.0))
  thick = np.sqrt(np.clip(1.0 - (x / bw) ** 2, 0.0, 1.0))
  body = _sig((bw - ax) / (soft + 0.01))
  dens = p.tissue * body * (0.30 + 0.70 * thick)
  # Upper arms at the sides, and female breast shadows over the lung bases.
  arm_c = p.body_w + p.arm_gap + 0.12 + 0.08 * np.clip(y - p.shoulder_y, 0.0, 1.0)
  across = (ax - arm_c) * (1.0 / 0.11)
  arm = (_sig((1.0 - np.abs(across)) / 0.18) * _sig((y - p.shoulder_y - 0.02) / 0.04) * _sig((0.2 - y) / 0.15))
  dens += 0.6 * p.tissue * arm * np.sqrt(np.clip(1.0 - across * across, 0.0, 1.0)) * (1.0 - body)
  bd = np.sqrt((ax - 0.46) ** 2 + ((y - 0.30) * 1.2) ** 2)
  dens += (0.08 * p.is_female) * _sig((p.breast_r - bd) / 0.03) * _sig((y - 0.08) / 0.15)

  # Lungs (masks include the diaphragm cut), both at once in the outward coordinate |x|; the image-right
  # (patient's left) dome sits lower.
  dome_shift = np.where(right, p.dome_left - p.raise_l, -p.raise_r)
  below = _sig((_dome(ax, p, -1) + dome_shift - y) / (soft + 0.006))
  lung_d = _lung_d(ax, y, p)
  air = _sig(lung_d / (soft + 0.008)) * below

  # Heart (bulging to the image right), aortic knob, upper mediastinum and trachea.
  ch, sh = np.cos(p.heart_rot), np.sin(p.heart_rot)
  ex, ey = x - p.hx, y - p.hy
  hu, hv = (ch * ex + sh * ey) / p.hw, (-sh * ex + ch * ey) / p.hh
  heart = _sig((1.0 - np.sqrt(hu * hu + hv * hv)) / (2 * soft / p.hh + 0.05))
  knob = _disk(x, y, 0.11, p.lung_yc - 0.22, 0.075, soft + 0.02)
  medi_w = 0.09 + 0.06 * np.clip((y - p.lung_yc + 0.5) / 0.6, 0, 1)
  medi = _sig((medi_w - np.abs(x - 0.015)) / (soft + 0.015)) * _sig((0.5 - y) / 0.05)
  shadow = np.maximum(np.maximum(heart, knob), medi)
  trachea = (_sig((0.030 - np.abs(x - 0.01 - 0.03 * (y - p.lung_yc))) / (soft + 0.006))
             * _sig((p.lung_yc - 0.15 - y) / 0.03) * body)

  # Lung markings: vessels branching out from the hila, fading to the periphery (computed on lung pixels).
  inside = np.flatnonzero(air > 0.0)
  lx, ly = x.reshape(-1)[inside], y.reshape(-1)[inside]
  image = inside // (size * size)
  hyv = ly - (p.lung_yc.reshape(-1)[image] + 0.02)
  hxv = np.abs(lx) - 0.17
  rr = np.sqrt(hxv * hxv + hyv * hyv)
  theta = _atan2(hyv, hxv)
  grids = np.concatenate([a.vessels for a in anats])  # (2 n, radial, angular) complex.
  nv = _polar_field(grids, image * 2 + (lx > 0), rr, theta, 0.9)
  trunk = np.exp(-(nv.real / (0.22 + 0.5 * np.exp(-rr / 0.12))) ** 2)
  branch = np.exp(-(nv.imag / 0.22) ** 2) * _sig((rr - 0.22) / 0.06) * 0.6
  vess = np.zeros(x.size, np.float32)
  vess[inside] = np.maximum(trunk, branch) * np.exp(-rr / 0.38) * _sig((rr - 0.03) / 0.03)
  vess = vess.reshape(x.shape)

  # Findings, per study, into batch maps.
  add = np.zeros_like(x)  # Extra density (solid tissue, fluid) seen through everything.
  opac = np.zeros_like(x)  # Fraction of lung air replaced (airspace disease).
  air_gain = np.ones_like(x)  # Multiplies lung air (hyperlucency).
  vessel_gain = np.ones_like(x)
  rib_gain = np.ones_like(x)
  boxes = [{} for _ in anats]
  if with_boxes:
    below_unraised = _sig((_dome(ax, p, -1) + np.where(right, p.dome_left, 0.0) - y) / (soft + 0.006))
  for i, a in enumerate(anats):
    if not a.labels:
      continue
    c = _Ctx(x[i], y[i], a, None, a.soft, size)
    lungs = {1: air[i] * right[i]}
    lungs[-1] = air[i] - lungs[1]
    if "Pneumothorax" in a.labels:  # The lung pulled away from the chest wall: a dark vessel-free rim.
      g, side = a.finding_rng["Pneumothorax"], -1 if a.finding_rng["Pneumothorax"].random() < 0.5 else 1
      # Small apical ones to large ones; the lung collapses towards a point near its hilum or its base.
      k = 1.0 - g.uniform(0.05, 0.24) * (0.7 + 0.3 * a.strength["Pneumothorax"])
      au, ay = a.lung_cu - g.uniform(0.05, 0.25), a.dome_y + g.uniform(-0.05, 0.25)
      ds = _lung_d((ax[i] - au) / k + au, (y[i] - ay) / k + ay, a) * k
      rim = lungs[side] * (1.0 - _sig(ds / (a.soft + 0.004)) * below[i])
      line = np.exp(-(ds / (0.6 * a.soft + 0.004)) ** 2) * lungs[side]
      c.vessel_gain = c.vessel_gain * (1.0 - rim)
      c.rib_gain = c.rib_gain * (1.0 - 0.6 * rim)
      c.air_gain = c.air_gain * (1.0 + 0.18 * rim)
      c.add += 0.12 * line * (1.0 - shadow[i])
      if with_boxes:
        boxes[i]["Pneumothorax"] = _box(rim + line)
    for name in _PAINT_ORDER:
      if name in a.labels:
        c.rng = a.study_rng[name]
        if with_boxes and name in BOXED:
          before = (c.add.copy(), c.opac.copy(), c.air_gain.copy(), c.vessel_gain.copy())
        _FINDINGS[name](c, lungs, a.finding_rng[name], a.strength[name])
        if with_boxes and name in BOXED:
          after = (c.add, c.opac, c.air_gain, c.vessel_gain)
          effect = sum(np.abs(u - v) for u, v in zip(after, before))
          if name == "Atelectasis":  # With the hemidiaphragm it lifted.
            effect = effect / max(float(effect.max()), 1e-6) + np.abs(below[i] - below_unraised[i])
          boxes[i][name] = _box(effect)
    if with_boxes and "Cardiomegaly" in a.labels:
      boxes[i]["Cardiomegaly"] = _box(heart[i])
    add[i], opac[i], air_gain[i], vessel_gain[i], rib_gain[i] = c.add, c.opac, c.air_gain, c.vessel_gain, c.rib_gain

  air_frac = (1.0 - 0.30 * np.clip(vess * vessel_gain, 0.0, 1.0)) * air_gain * (1.0 - opac)
  dens -= p.air * air * (1.0 - 0.85 * shadow) * air_frac
  hila = np.exp(-(((ax - 0.19) / 0.06) ** 2 + ((y - p.lung_yc - 0.02) / 0.10) ** 2))
  dens += 0.10 * shadow * body + 0.12 * hila * (1.0 - 0.5 * shadow) - 0.18 * trachea

  # Bones: spine, posterior and anterior ribs, clavicles, humeral heads.
  spine = _sig((0.06 - np.abs(x - 0.01)) / (soft + 0.01)) * body
  dens += spine * (0.10 + 0.04 * np.cos(2 * np.pi * (y / (1.1 * p.rib_sp) + p.rib_phase)))
  lat_dome = p.dome_y + p.dome_h * 1.1
  cage = (_sig((bw - 0.04 - ax) / 0.03) * _sig((ax - 0.07) / 0.03) * _sig((lat_dome + 0.12 - y) / 0.06)
          * (0.45 + 0.55 * air) * rib_gain)
  v = (y + 0.30 * ax - 2.2 * np.maximum(ax - 0.45, 0.0) ** 2 - (p.shoulder_y + 0.08)) / p.rib_sp + p.rib_phase
  ribs = _sig((np.cos(2 * np.pi * v) - 0.2) / 0.30) * _sig((v + 0.3) / 0.2)
  va = (y - 0.55 * (0.9 - ax) - (p.shoulder_y + 0.05)) / (1.6 * p.rib_sp)
  ant = _sig((np.cos(2 * np.pi * va) - 0.55) / 0.25) * _sig((ax - 0.30) / 0.05) * _sig((0.15 - y) / 0.1)
  dens += p.rib_amp * cage * (ribs + 0.5 * ant)
  clav_y = p.clav_top - 0.16 * (ax - 0.06) + 0.03 * np.sin(np.pi * np.clip((ax - 0.06) / 0.7, 0, 1))
  dens += 0.14 * (np.exp(-((y - clav_y) / 0.03) ** 2) * _sig((ax - 0.06) / 0.02)
                  * _sig((p.body_w - 0.08 - ax) / 0.03))
  dens += 0.20 * _disk(ax, y, p.body_w + 0.04, p.shoulder_y + 0.08, 0.11, soft + 0.01) * np.maximum(body, arm)
  # Look-alikes (see LOOK_ALIKES): fat pad, retrocardiac air, scapular border, skin fold, minor fissure,
  # nipple shadows, companion stripe and vessels seen end-on.
  dens += p.fat_pad * np.exp(-2.0 * (((x - p.fat_pad_x) / (1.3 * p.fat_pad_r)) ** 2
                                     + ((y - p.fat_y) / p.fat_pad_r) ** 2))
  dens -= p.rc_amp * _disk(x, y, p.rc_x, p.rc_y, p.rc_r, soft + 0.02)
  sy = y - p.shoulder_y
  dens += (p.scap_amp * _sig((ax - p.scap_u - p.scap_tilt * sy) / (soft + 0.004))
           * _sig((sy - 0.10) / 0.04) * _sig((0.70 - sy) / 0.06) * body)
  fu = p.fold_side * x - p.fold_u - 0.25 * y * y
  dens += (p.fold_amp * _sig(fu / (soft + 0.004)) * np.exp(-np.maximum(fu, 0.0) / 0.08)
           * _sig((y + 0.5) / 0.05) * _sig((0.3 - y) / 0.05) * body)
  dens += p.fissure * np.exp(-((y - p.lung_yc - p.fissure_y) / (soft + 0.01)) ** 2) * air * (1.0 - right)
  dens += p.nipple * _disk(ax, y, p.nipple_u, p.nipple_y, 0.035, soft + 0.006) * body
  dens += (p.stripe * _sig((0.018 - lung_d) / (soft + 0.004)) * air * _sig((ax - p.lung_cu - 0.05) / 0.04)
           * _sig((-0.1 - y) / 0.1))
  for k in range(4):
    amp = np.array([a.dot_amp[k] for a in anats], np.float32).reshape(-1, 1, 1)
    dx_ = np.array([a.dot_x[k] for a in anats], np.float32).reshape(-1, 1, 1)
    dy_ = np.array([a.dot_y[k] for a in anats], np.float32).reshape(-1, 1, 1)
    dens += amp * _disk(x, y, dx_, dy_, 0.022, soft + 0.004) * air
  dens += add * body
  dens -= (p.gastric_amp * _disk(x, y, p.gastric_x, p.gastric_y, p.gastric_r, soft + 0.01)
           * _sig((p.gastric_y + 0.3 * p.gastric_r - y) / 0.01))
  dens *= 1.0 + p.grad_x * x + p.grad_y * y
  index = _lerp_index(9, size)
  dens += 0.03 * 1.35 * _upsample(np.stack([a.mottle for a in anats]), index, index) * body

  # Exposure: intensity = 1 - exp(-k d), then a window, gamma and quantum noise.
  img = 1.0 - np.exp(-p.k * np.maximum(dens, 0.0))
  img = np.clip((img - p.lo) / (p.hi - p.lo), 0.0, 1.0) ** p.gamma
  img += np.stack([a.quantum for a in anats])
  images = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return (images, boxes) if with_boxes else images


def _box(effect, frac=0.02):
  """(x, y, w, h) in pixels of where `effect` ((S, S), >= 0) exceeds frac of its maximum; None if all zero."""
  top = float(effect.max())
  if top <= 0.0:
    return None
  rows, cols = np.nonzero(effect > frac * top)
  return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def _render(size, seed, patient, followup, labels, female, ap):
  """One uint8 (size, size) radiograph of study `followup` of `patient` with the positive `labels`."""
  return _render_batch(size, seed, [(patient, followup, labels, female, ap)])[0]


def _png(image):
  """The bytes of an 8-bit greyscale PNG of `image` ((H, W) uint8), no filtering, zlib level 6."""
  h, w = image.shape
  rows = np.zeros((h, w + 1), np.uint8)  # Each row starts with its filter type, 0 (none).
  rows[:, 1:] = image

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _write_png(path, image):
  with open(path, "wb") as f:
    f.write(_png(image))


def _render_chunk(job):
  """Worker: renders and writes the PNGs of one chunk of studies; returns how many it wrote and the boxes
  [(image name, finding, (x, y, w, h))] of its rows marked for boxes (the test split's)."""
  images_dir, size, seed, rows = job
  per_batch = max(1, _BATCH_PIXELS // (size * size))
  box_rows = []
  for start in range(0, len(rows), per_batch):
    batch = rows[start:start + per_batch]
    images, boxes = _render_batch(size, seed, [row[1:6] for row in batch], with_boxes=True)
    for row, image, found in zip(batch, images, boxes):
      _write_png(os.path.join(images_dir, row[0]), image)
      if row[6]:
        box_rows += [(row[0], name, box) for name, box in sorted(found.items()) if box is not None]
  return len(rows), box_rows


# ----------------------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------------------


def _looks_foreign(out_dir):
  """True if out_dir holds data (a label file or images/) that a phantom run did not write."""
  if not os.path.isdir(out_dir):
    return False
  ours = os.path.exists(os.path.join(out_dir, MARKER)) or os.path.exists(os.path.join(out_dir, _INCOMPLETE))
  theirs = (os.path.exists(os.path.join(out_dir, LABEL_FILE)) or os.path.isdir(os.path.join(out_dir, IMAGES))
            or os.path.exists(os.path.join(out_dir, LABEL_FILE + ".gz")))
  return theirs and not ours


def _clear(out_dir):
  """Removes what an earlier phantom run wrote, and caches derived from it (jaxcxr_prepared)."""
  for name in (MARKER, LABEL_FILE, TRAIN_VAL_LIST, TEST_LIST, CLEAN_LABEL_FILE, BBOX_FILE):
    path = os.path.join(out_dir, name)
    if os.path.exists(path):
      os.remove(path)
  images_dir = os.path.join(out_dir, IMAGES)
  if os.path.isdir(images_dir):
    for name in os.listdir(images_dir):
      if name.endswith(".png") or name.endswith(".tmp"):
        os.remove(os.path.join(images_dir, name))
  prepared = os.path.join(out_dir, "jaxcxr_prepared")
  if os.path.isdir(prepared):
    shutil.rmtree(prepared)


def _num_workers(num_images):
  if num_images < 400:
    return 1
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, num_images // 200))


def _worker_init():
  """Keeps freed memory in the worker's heap (glibc): the render's temporaries are re-used each batch, and
  returning them to the kernel costs a page fault per 4 KiB on every batch."""
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
  except (OSError, AttributeError):
    pass


def _mp_context():
  """fork (fast, no re-import of __main__) unless JAX is loaded here: its runtime threads make fork unsafe."""
  if "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules:
    return multiprocessing.get_context("fork")
  return multiprocessing.get_context("spawn")


def _write_text(path, text):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def generate(out_dir, *, num_images, image_size, seed=0, label_noise=1.0, prevalence=None, progress=True,
             workers=None):
  """Writes a phantom dataset in the NIH ChestX-ray14 layout into out_dir and returns its summary.

  Args:
    out_dir: folder to write (created if needed). Files of an earlier phantom run there are replaced; a
      folder holding other data (a label file or images/ without phantom.json) is refused.
    num_images: number of images (studies).
    image_size: side of the square 8-bit grey PNGs, in pixels.
    seed: the same seed gives byte-identical files.
    label_noise: scale of the per-finding label noise rates LABEL_NOISE (1 = as documented there, 0 = the
      label file holds the painted labels). Dropped labels still show in the image; the painted labels are
      written to CLEAN_LABEL_FILE either way.
    prevalence: {class: per-image prevalence} overriding entries of DEFAULT_PREVALENCE.
    progress: show a tqdm progress bar.
    workers: processes to render with (default: one per available CPU, one for small runs). The output does
      not depend on it.

  Also writes CLEAN_LABEL_FILE (the label file with the painted labels) and BBOX_FILE (a box around each
  painted finding of BOXED in every test image, in the stored image's pixels).

  Returns:
    {'out_dir', 'num_images', 'num_patients', 'num_train_val', 'num_test', 'positives': {class: count},
     'positives_in_images', 'written_negative', 'written_positive', 'boxes', 'no_finding', 'params'}; the
     positives are those of the label file (after label noise), positives_in_images the painted ones.
  """
  params = _params(num_images, image_size, seed, label_noise, prevalence)
  num_images, image_size, seed = params["num_images"], params["image_size"], params["seed"]
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if _looks_foreign(out_dir):
    raise ValueError(f"{out_dir} already holds a dataset that the phantom generator did not write "
                     f"(no {MARKER}); refusing to overwrite it. Pick another data.dir / --out.")
  os.makedirs(out_dir, exist_ok=True)
  open(os.path.join(out_dir, _INCOMPLETE), "w").close()
  _clear(out_dir)
  images_dir = os.path.join(out_dir, IMAGES)
  os.makedirs(images_dir, exist_ok=True)

  # Studies, demographics and labels (all from one generator, independent of rendering).
  rng = np.random.default_rng((seed, 0))
  patients, followups = _sample_studies(num_images, rng)
  num_patients = int(patients[-1])
  labels = _sample_labels(patients, params["prevalence"], rng)
  female = (rng.random(num_patients + 1) < 0.435)[patients]
  base_age = np.clip(np.round(rng.normal(47.0, 16.5, num_patients + 1)), 2, 92).astype(int)
  years = np.cumsum((rng.random(num_images) < 0.45) & (followups > 0))  # Follow-ups age 0-1 year each.
  age = base_age[patients] + years - years[np.arange(num_images) - followups]
  sick = labels.sum(1) > 0
  ap = rng.random(num_images) < np.where(sick, 0.5, 0.3)
  original = rng.integers(len(_ORIGINAL_SIZES), size=num_images)
  spacing = rng.integers(len(_SPACINGS), size=num_images)
  test = _patient_split(patients, rng)
  noisy = _add_label_noise(labels, params["prevalence"], params["label_noise"], rng)
  names = [f"{p:08d}_{f:03d}.png" for p, f in zip(patients, followups)]

  # Render.
  rows = [(names[i], int(patients[i]), int(followups[i]), tuple(CLASSES[j] for j in np.flatnonzero(labels[i])),
           bool(female[i]), bool(ap[i]), bool(test[i])) for i in range(num_images)]
  n_workers = max(1, int(workers or _num_workers(num_images)))
  chunk = int(np.clip(num_images // (8 * n_workers), 16, 256))  # Several chunks per worker, for balance.
  jobs = [(images_dir, image_size, seed, rows[i:i + chunk]) for i in range(0, num_images, chunk)]
  bar = tqdm.tqdm(total=num_images, desc=f"Phantom {image_size}px", unit="img", disable=not progress,
                  smoothing=0.1)
  box_rows = []
  try:
    if n_workers <= 1:
      results = map(_render_chunk, jobs)
      for done, found in results:
        bar.update(done)
        box_rows += found
    else:
      with _mp_context().Pool(n_workers, initializer=_worker_init) as pool:
        for done, found in pool.imap_unordered(_render_chunk, jobs):
          bar.update(done)
          box_rows += found
  finally:
    bar.close()
  box_rows.sort()

  # Label file and split lists.
  def label_file(which):
    lines = [_NIH_HEADER]
    for i in range(num_images):
      found = [CLASSES[j] for j in np.flatnonzero(which[i])]
      w, h = _ORIGINAL_SIZES[original[i]]
      sp = _SPACINGS[spacing[i]]
      lines.append(f"{names[i]},{'|'.join(found) or NO_FINDING},{followups[i]},{patients[i]},{age[i]},"
                   f"{'F' if female[i] else 'M'},{'AP' if ap[i] else 'PA'},{w},{h},{sp},{sp}")
    return "\n".join(lines) + "\n"

  _write_text(os.path.join(out_dir, LABEL_FILE), label_file(noisy))
  _write_text(os.path.join(out_dir, CLEAN_LABEL_FILE), label_file(labels))
  _write_text(os.path.join(out_dir, BBOX_FILE),
              "\n".join([_BBOX_HEADER] + [f"{n},{f},{x},{y},{w},{h}" for n, f, (x, y, w, h) in box_rows]) + "\n")
  _write_text(os.path.join(out_dir, TRAIN_VAL_LIST), "\n".join(n for n, t in zip(names, test) if not t) + "\n")
  _write_text(os.path.join(out_dir, TEST_LIST), "\n".join(n for n, t in zip(names, test) if t) + "\n")

  summary = {
      "out_dir": out_dir,
      "num_images": num_images,
      "num_patients": num_patients,
      "num_train_val": int((~test).sum()),
      "num_test": int(test.sum()),
      "positives": {c: int(noisy[:, j].sum()) for j, c in enumerate(CLASSES)},
      "positives_in_images": {c: int(labels[:, j].sum()) for j, c in enumerate(CLASSES)},
      "written_negative": {c: int((labels[:, j] & ~noisy[:, j]).sum()) for j, c in enumerate(CLASSES)},
      "written_positive": {c: int((noisy[:, j] & ~labels[:, j]).sum()) for j, c in enumerate(CLASSES)},
      "boxes": len(box_rows),
      "no_finding": int((~noisy.any(1)).sum()),
      "params": params,
  }
  marker = os.path.join(out_dir, MARKER)
  _write_text(marker, json.dumps({"params": params, "summary": {k: v for k, v in summary.items()
                                                                 if k not in ("params", "out_dir")}},
                                 indent=1) + "\n")
  os.remove(os.path.join(out_dir, _INCOMPLETE))
  return summary


def read_summary(out_dir):
  """The summary of the complete phantom dataset in out_dir, or None if phantom.json is absent."""
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  marker = os.path.join(out_dir, MARKER)
  if not os.path.exists(marker):
    return None
  with open(marker, encoding="utf-8") as f:
    stored = json.load(f)
  return dict(stored["summary"], out_dir=out_dir, params=stored["params"])


def ensure(out_dir, *, num_images, image_size, seed=0, label_noise=1.0, prevalence=None, progress=True,
           workers=None):
  """Returns the summary of the phantom dataset in out_dir, generating it unless already complete.

  Reuses out_dir if its phantom.json records the same parameters; regenerates it from scratch if
  phantom.json is absent (a first or interrupted run) or was written by another GENERATOR_VERSION; raises
  ValueError if it records other parameters.
  """
  params = _params(num_images, image_size, seed, label_noise, prevalence)
  existing = read_summary(out_dir)
  if existing is not None and existing["params"].get("generator_version") != GENERATOR_VERSION:
    logging.warning("%s was generated by phantom generator version %s; regenerating it with version %d.",
                    out_dir, existing["params"].get("generator_version"), GENERATOR_VERSION)
    existing = None
  if existing is not None:
    if existing["params"] == params:
      return existing
    theirs, ours = existing["params"], params
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    raise ValueError(
        f"{os.path.abspath(os.path.expanduser(out_dir))} holds a phantom dataset generated with other parameters "
        f"(differing: {', '.join(diff)}).\n  on disk:   {json.dumps(theirs, sort_keys=True)}\n"
        f"  requested: {json.dumps(ours, sort_keys=True)}\n"
        f"Pick another data.dir, or delete that folder to regenerate it.")
  return generate(out_dir, num_images=num_images, image_size=image_size, seed=seed, label_noise=label_noise,
                  prevalence=prevalence, progress=progress, workers=workers)

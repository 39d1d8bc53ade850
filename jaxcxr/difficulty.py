"""No-learning difficulty controls: what a model has to beat on a data set, per finding.

Two controls, both fitted on the train_val split only and scored on the test split:

  window   the best fixed-window intensity statistic: every square window of side 1/8, 3/16 and 1/4 of the
           image (stride half a side) and four statistics of its pixels (mean, standard deviation, 95th
           percentile minus median, median minus 5th percentile), each read as a score in either direction;
           the (window, statistic, direction) with the highest train_val AUROC is scored on test.
  logreg   an L2-regularised logistic regression on the raw pixels averaged down to 16 x 16 (standardised),
           its strength chosen by patient-grouped 3-fold cross-validation on train_val (AUROC).

A model that does not clearly beat them has learnt a template, not the finding. `controls` is pure (arrays
in, numbers out); `load_images` reads an NIH-layout folder (the phantom's, or a prepared one);
`control_rows` turns the result into rows for the study table.

  python -m jaxcxr.phantom --difficulty --out /tmp/phantom_demo
"""

import os

import numpy as np
from PIL import Image
from scipy import stats as sp_stats
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import model_selection
from sklearn import preprocessing

from jaxcxr.data import nih

# Window sides as fractions of the image side, and the statistics tried in each window.
WINDOW_FRACTIONS = (0.125, 0.1875, 0.25)
STATISTICS = ("mean", "std", "p95_minus_median", "median_minus_p5")
LOGREG_SIDE = 16  # Side of the downsampled image the logistic regression reads.
LOGREG_CS = (1e-3, 1e-2, 1e-1, 1.0)  # Inverse regularisation strengths tried by cross-validation.
RESULTS_FILE = "difficulty.json"


def _auroc_columns(scores, labels):
  """AUROC of every column of scores (N, F) against binary labels (N,), by ranks (ties averaged)."""
  labels = np.asarray(labels, bool)
  n_pos = int(labels.sum())
  n_neg = len(labels) - n_pos
  if n_pos == 0 or n_neg == 0:
    return np.full(scores.shape[1], np.nan)
  ranks = sp_stats.rankdata(scores, axis=0)
  return (ranks[labels].sum(0) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def window_features(images, *, chunk=1000):
  """(N, F) float32 statistics of fixed windows of (N, S, S) uint8 images, and a description of each column.

  Windows of side round(f * S) for f in WINDOW_FRACTIONS, stride half a side; STATISTICS per window.
  """
  images = np.asarray(images)
  n, size = images.shape[0], images.shape[1]
  blocks, names = [], []
  for frac in WINDOW_FRACTIONS:
    w = max(2, int(round(frac * size)))
    st = max(1, w // 2)
    starts = range(0, size - w + 1, st)
    k5, k50, k95 = int(0.05 * (w * w - 1)), int(0.5 * (w * w - 1)), int(round(0.95 * (w * w - 1)))
    out = np.empty((n, len(starts), len(starts), len(STATISTICS)), np.float32)
    for lo in range(0, n, chunk):
      view = np.lib.stride_tricks.sliding_window_view(images[lo:lo + chunk], (w, w), axis=(1, 2))
      win = view[:, ::st, ::st].reshape(view.shape[0], len(starts), len(starts), w * w)
      part = np.partition(win, (k5, k50, k95), axis=-1)
      p5, p50, p95 = (part[..., k].astype(np.float32) for k in (k5, k50, k95))
      wf = win.astype(np.float32)
      out[lo:lo + chunk] = np.stack([wf.mean(-1), wf.std(-1), p95 - p50, p50 - p5], -1)
    blocks.append(out.reshape(n, -1))
    names += [f"{stat} of the {w}x{w} window at x={x0}, y={y0}" for y0 in starts for x0 in starts
              for stat in STATISTICS]
  return np.concatenate(blocks, 1), names


def downsample(images, side=LOGREG_SIDE):
  """(N, side * side) float32: each (S, S) image averaged down to side x side (PIL box filter)."""
  images = np.asarray(images)
  if images.shape[1] % side == 0:
    f = images.shape[1] // side
    small = images.reshape(len(images), side, f, side, f).astype(np.float32).mean((2, 4))
  else:
    small = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.BOX), np.float32)
                      for im in images])
  return small.reshape(len(images), -1)


def _window_control(feats, names, y_train, y_test, train, test):
  auc = _auroc_columns(feats[train], y_train)
  strength = np.abs(np.nan_to_num(auc, nan=0.5) - 0.5)
  best = int(np.argmax(strength))
  sign = 1.0 if auc[best] >= 0.5 else -1.0
  test_scores = sign * feats[test, best]
  return {"window_auroc": _auroc(y_test, test_scores), "window_train_val_auroc": float(0.5 + strength[best]),
          "window": names[best] + ("" if sign > 0 else ", lower is positive"), "_scores": test_scores}


def _auroc(y, s):
  y = np.asarray(y, bool)
  if y.all() or not y.any():
    return None
  return float(sk_metrics.roc_auc_score(y, s))


def _logreg_control(x, y_train, y_test, train, test, groups, seed):
  if y_train.sum() < 3:
    return {"logreg_auroc": None, "logreg_C": None, "_scores": None}
  scaler = preprocessing.StandardScaler().fit(x[train])
  xt, xs = scaler.transform(x[train]), scaler.transform(x[test])
  folds = model_selection.StratifiedGroupKFold(3, shuffle=True, random_state=seed)
  cv = list(folds.split(xt, y_train, groups[train]))
  model = linear_model.LogisticRegressionCV(Cs=list(LOGREG_CS), l1_ratios=(0.0,), cv=cv, scoring="roc_auc",
                                            max_iter=300, tol=1e-3, use_legacy_attributes=False)
  model.fit(xt, y_train)
  scores = model.decision_function(xs)
  return {"logreg_auroc": _auroc(y_test, scores), "logreg_C": float(np.ravel(model.C_)[0]), "_scores": scores}


def controls(*, images, labels, train, test, patients, classes=nih.CLASSES, findings=None, clean_labels=None,
             seed=0):
  """Per finding, the two no-learning controls' test AUROC.

  Args:
    images: (N, S, S) uint8.
    labels: (N, len(classes)) 0/1, the labels the controls fit and are scored against (the written ones).
    train, test: (N,) bool masks (train_val and test).
    patients: (N,) patient ids (the cross-validation folds are grouped by patient).
    classes: names of the label columns.
    findings: the findings to score (default: all classes).
    clean_labels: optional (N, len(classes)) true labels; the same test scores are also scored against them.
    seed: seed of the cross-validation folds.

  Returns:
    {finding: {'test_positives', 'window_auroc', 'window_train_val_auroc', 'window', 'logreg_auroc',
    'logreg_C'} (+ 'window_auroc_clean', 'logreg_auroc_clean' with clean_labels)}; an AUROC is None where
    the test split holds one class only.
  """
  labels = np.asarray(labels)
  train, test = np.asarray(train, bool), np.asarray(test, bool)
  patients = np.asarray(patients)
  findings = list(classes if findings is None else findings)
  feats, names = window_features(images)
  small = downsample(images)
  out = {}
  for f in findings:
    j = list(classes).index(f)
    y = labels[:, j].astype(bool)
    res = {"test_positives": int(y[test].sum()), "train_val_positives": int(y[train].sum())}
    win = _window_control(feats, names, y[train], y[test], train, test)
    lr = _logreg_control(small, y[train], y[test], train, test, patients, seed)
    res.update({k: v for k, v in {**win, **lr}.items() if not k.startswith("_")})
    if clean_labels is not None:
      yc = np.asarray(clean_labels)[test, j].astype(bool)
      res["window_auroc_clean"] = _auroc(yc, win["_scores"])
      res["logreg_auroc_clean"] = None if lr["_scores"] is None else _auroc(yc, lr["_scores"])
    out[f] = res
  return out


def load_images(data_dir, names):
  """(N, S, S) uint8 of the PNGs `names` in data_dir/images (all of one size)."""
  out = None
  for i, name in enumerate(names):
    with Image.open(os.path.join(data_dir, "images", name)) as im:
      a = np.asarray(im.convert("L"))
    if out is None:
      out = np.empty((len(names),) + a.shape, np.uint8)
    out[i] = a
  return out


def controls_for_folder(data_dir, *, findings=None, clean_label_file=None, seed=0):
  """`controls` on an NIH-layout folder's official split (label file, train_val_list.txt, test_list.txt)."""
  meta = nih.read_labels(nih.find_label_file(data_dir))
  order = {n: i for i, n in enumerate(meta.names)}
  train_names = nih.read_list(os.path.join(data_dir, nih.TRAIN_VAL_LIST))
  test_names = nih.read_list(os.path.join(data_dir, nih.TEST_LIST))
  idx = np.asarray([order[n] for n in train_names + test_names])
  train = np.arange(len(idx)) < len(train_names)
  clean = None
  if clean_label_file and os.path.exists(os.path.join(data_dir, clean_label_file)):
    cmeta = nih.read_labels(os.path.join(data_dir, clean_label_file))
    corder = {n: i for i, n in enumerate(cmeta.names)}
    clean = cmeta.labels[[corder[n] for n in meta.names[idx]]]
  images = load_images(data_dir, list(meta.names[idx]))
  return controls(images=images, labels=meta.labels[idx], train=train, test=~train,
                  patients=meta.patients[idx], findings=findings, clean_labels=clean, seed=seed)


def control_rows(results, *, target):
  """Rows for the study table: one per control for the target finding.

  Each row: {'arm': 'control: window' | 'control: logreg', 'target', 'auroc', 'auroc_clean', 'detail'};
  the threshold metrics (recall, precision, F1) do not apply to a control and are absent.
  """
  r = results[target]
  return [
      {"arm": "control: window", "target": target, "auroc": r["window_auroc"],
       "auroc_clean": r.get("window_auroc_clean"), "detail": r["window"]},
      {"arm": "control: logreg", "target": target, "auroc": r["logreg_auroc"],
       "auroc_clean": r.get("logreg_auroc_clean"),
       "detail": f"logistic regression on {LOGREG_SIDE}x{LOGREG_SIDE} pixels, C={r['logreg_C']}"},
  ]

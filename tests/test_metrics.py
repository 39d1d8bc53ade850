"""Tests for jaxcxr.metrics against scikit-learn and brute force."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcxr import metrics
from jaxcxr import reports

CLASSES = ("Alpha", "Beta", "Gamma", "Delta")


def _data(seed, n=300, num_classes=len(CLASSES), prevalence=(0.3, 0.1, 0.05, 0.5)):
  """Informative random scores: positives shifted up, with ties (scores rounded)."""
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=(n, num_classes)) < np.asarray(prevalence)).astype(np.float32)
  logits = rng.normal(size=(n, num_classes)) + 1.5 * labels - 1.0
  scores = np.round(1 / (1 + np.exp(-logits)), 2).astype(np.float32)
  return labels, scores


def _f1_at(y, s, thr):
  return skm.f1_score(y, s >= thr, zero_division=0.0)


def _all_thresholds(y, s):
  """(thresholds, recall, fpr, f1) of `s >= t` for every distinct score t, by brute force."""
  t = np.unique(s)
  y = np.asarray(y, bool)
  pred = s[None, :] >= t[:, None]
  tp, fp = np.sum(pred & y, 1), np.sum(pred & ~y, 1)
  fn = y.sum() - tp
  return t, tp / y.sum(), fp / max((~y).sum(), 1), 2 * tp / (2 * tp + fp + fn)


# ----------------------------------------------------------------------------
# binary_metrics vs scikit-learn.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_binary_metrics_match_sklearn(seed):
  labels, scores = _data(seed)
  rng = np.random.default_rng(100 + seed)
  for c in range(labels.shape[1]):
    y, s = labels[:, c].astype(int), scores[:, c]
    thr = float(rng.choice(s))
    m = metrics.binary_metrics(labels=y, scores=s, threshold=thr)
    pred = (s >= thr).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["n"] == len(y) and m["n_pos"] == int(y.sum())
    np.testing.assert_allclose(m["auroc"], skm.roc_auc_score(y, s), rtol=1e-12)
    np.testing.assert_allclose(m["auprc"], skm.average_precision_score(y, s), rtol=1e-12)
    np.testing.assert_allclose(m["recall"], skm.recall_score(y, pred), rtol=1e-12)
    np.testing.assert_allclose(m["specificity"], tn / (tn + fp), rtol=1e-12)
    if tp + fp:
      np.testing.assert_allclose(m["precision"], skm.precision_score(y, pred), rtol=1e-12)
    else:
      assert m["precision"] is None
    np.testing.assert_allclose(m["f1"], skm.f1_score(y, pred, zero_division=0.0), rtol=1e-12)
    pred5 = (s >= 0.5).astype(int)
    np.testing.assert_allclose(m["recall_at_0.5"], skm.recall_score(y, pred5), rtol=1e-12)
    np.testing.assert_allclose(m["f1_at_0.5"], skm.f1_score(y, pred5, zero_division=0.0), rtol=1e-12)
    if pred5.any():
      np.testing.assert_allclose(m["precision_at_0.5"], skm.precision_score(y, pred5), rtol=1e-12)
    assert m["threshold"] == thr
    # Plain Python types only.
    assert list(m) == ["n_pos", "n", "auroc", "auprc", "recall", "specificity", "precision", "f1",
                       "threshold", "recall_at_0.5", "precision_at_0.5", "f1_at_0.5"]
    assert all(type(v) in (int, float) or v is None for v in m.values()), m
    json.dumps(m)


@pytest.mark.filterwarnings("error")
def test_undefined_metrics_are_none_without_warnings():
  s = np.array([0.1, 0.7, 0.4, 0.9, 0.2], np.float32)
  # No positives.
  m = metrics.binary_metrics(labels=np.zeros(5), scores=s, threshold=0.5)
  assert m["n_pos"] == 0 and m["n"] == 5
  for key in ("auroc", "auprc", "recall", "recall_at_0.5"):
    assert m[key] is None, key
  assert m["specificity"] == 0.6 and m["precision"] == 0.0 and m["f1"] == 0.0
  # No positives and nothing predicted positive: precision and F1 undefined too.
  m = metrics.binary_metrics(labels=np.zeros(5), scores=s, threshold=0.95)
  assert m["precision"] is None and m["f1"] is None and m["specificity"] == 1.0
  # No negatives.
  m = metrics.binary_metrics(labels=np.ones(5), scores=s, threshold=0.5)
  assert m["auroc"] is None and m["specificity"] is None
  assert m["auprc"] == 1.0 and m["recall"] == 0.4 and m["precision"] == 1.0
  # No predicted positives.
  m = metrics.binary_metrics(labels=[0, 1, 0, 1, 0], scores=s, threshold=0.99)
  assert m["precision"] is None and m["recall"] == 0.0 and m["f1"] == 0.0
  # Empty input.
  m = metrics.binary_metrics(labels=np.zeros(0), scores=np.zeros(0), threshold=0.5)
  assert m["n"] == 0 and all(m[k] is None for k in metrics.METRIC_KEYS)
  # Thresholds without positives / without negatives.
  for rule in metrics.THRESHOLD_RULES:
    assert metrics.choose_threshold(labels=np.zeros(5), scores=s, rule=rule) == 0.5
    thr = metrics.choose_threshold(labels=np.ones(5), scores=s, rule=rule)
    assert thr == (0.5 if rule == "fixed" else pytest.approx(0.1))
  # Whole evaluation with a class without positives: macro means skip the None.
  labels, scores = _data(0)
  labels[:, 2] = 0
  thresholds = metrics.select_thresholds(labels=labels, scores=scores)
  assert thresholds[2] == 0.5
  ev = metrics.evaluate_scores(labels=labels, scores=scores, classes=CLASSES, thresholds=thresholds)
  assert ev["classes"]["Gamma"]["auroc"] is None
  defined = [ev["classes"][c]["auroc"] for c in CLASSES if c != "Gamma"]
  assert ev["macro"]["auroc"] == pytest.approx(np.mean(defined), rel=1e-12)


def test_evaluate_scores_structure():
  labels, scores = _data(1)
  thresholds = np.array([0.2, 0.3, 0.4, 0.5])
  ev = metrics.evaluate_scores(labels=labels, scores=scores, classes=CLASSES, thresholds=thresholds)
  assert list(ev["classes"]) == list(CLASSES)
  for c, name in enumerate(CLASSES):
    assert ev["classes"][name] == metrics.binary_metrics(
        labels=labels[:, c], scores=scores[:, c], threshold=thresholds[c])
  for key in metrics.METRIC_KEYS:
    values = [ev["classes"][n][key] for n in CLASSES if ev["classes"][n][key] is not None]
    assert ev["macro"][key] == pytest.approx(np.mean(values), rel=1e-12)
  json.dumps(ev)
  with pytest.raises(ValueError):
    metrics.evaluate_scores(labels=labels, scores=scores, classes=CLASSES[:3], thresholds=thresholds)
  with pytest.raises(ValueError):
    metrics.evaluate_scores(labels=labels, scores=scores[:, :3], classes=CLASSES, thresholds=thresholds)


# ----------------------------------------------------------------------------
# Thresholds.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_max_f1_is_the_maximum_over_all_thresholds(seed):
  labels, scores = _data(seed)
  for c in range(labels.shape[1]):
    y, s = labels[:, c], scores[:, c]
    thr = metrics.choose_threshold(labels=y, scores=s, rule="max_f1")
    _, _, _, f1 = _all_thresholds(y, s)
    assert _f1_at(y, s, thr) == pytest.approx(f1.max(), rel=1e-12)
    assert thr in s


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_target_recall_is_the_highest_threshold_reaching_it(seed, target):
  labels, scores = _data(seed)
  for c in range(labels.shape[1]):
    y, s = labels[:, c].astype(bool), scores[:, c]
    thr = metrics.choose_threshold(labels=y, scores=s, rule="target_recall", target_recall=target)
    t, recall, _, _ = _all_thresholds(y, s)
    assert recall[t == thr].item() >= target
    assert np.all(recall[t > thr] < target)


def test_youden_and_fixed():
  labels, scores = _data(2)
  for c in range(labels.shape[1]):
    y, s = labels[:, c], scores[:, c]
    thr = metrics.choose_threshold(labels=y, scores=s, rule="youden")
    _, tpr, fpr, _ = _all_thresholds(y, s)
    m = metrics.binary_metrics(labels=y, scores=s, threshold=thr)
    assert m["recall"] + m["specificity"] - 1 == pytest.approx(np.max(tpr - fpr), rel=1e-12)
    assert metrics.choose_threshold(labels=y, scores=s, rule="fixed") == 0.5
  with pytest.raises(ValueError, match="max_f1"):
    metrics.choose_threshold(labels=y, scores=s, rule="median")


def test_select_thresholds():
  labels, scores = _data(3)
  thr = metrics.select_thresholds(labels=labels, scores=scores, rule="target_recall", target_recall=0.7)
  assert thr.shape == (len(CLASSES),)
  for c in range(len(CLASSES)):
    assert thr[c] == metrics.choose_threshold(
        labels=labels[:, c], scores=scores[:, c], rule="target_recall", target_recall=0.7)


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def _report(labels, scores):
  thresholds = metrics.select_thresholds(labels=labels, scores=scores)
  ev = metrics.evaluate_scores(labels=labels, scores=scores, classes=CLASSES, thresholds=thresholds)
  return {"split": "val", "checkpoint_step": 1234, "threshold_rule": "max_f1", **ev}


def test_write_report(tmp_path):
  labels, scores = _data(4)
  labels[:, 2] = 0  # a class without positives must not break the plots
  report = _report(labels, scores)
  out = tmp_path / "eval"
  reports.write(report, out, labels=labels, scores=scores, classes=CLASSES, highlight="Beta")
  assert sorted(p.name for p in out.iterdir()) == ["pr.png", "report.json", "report.md", "roc.png", "scores.npz"]
  with np.load(out / "scores.npz", allow_pickle=False) as z:  # The scores and labels the report describes.
    np.testing.assert_allclose(z["scores"], np.asarray(scores, np.float32))
    np.testing.assert_array_equal(z["labels"], np.asarray(labels))
  assert json.loads((out / "report.json").read_text()) == report
  md = (out / "report.md").read_text()
  for name in CLASSES:
    assert name in md
  assert "val" in md and "1234" in md and "macro" in md and "n/a" in md
  for name in ("roc.png", "pr.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="highlight"):
    reports.write(report, out, labels=labels, scores=scores, classes=CLASSES, highlight="Hernia")


def test_write_report_serialises_numpy(tmp_path):
  labels, scores = _data(5)
  report = _report(labels, scores)
  report["checkpoint_step"] = np.int64(7)
  report["thresholds"] = np.array([0.1, 0.2])
  reports.write(report, tmp_path, labels=labels, scores=scores, classes=CLASSES)
  loaded = json.loads((tmp_path / "report.json").read_text())
  assert loaded["checkpoint_step"] == 7 and loaded["thresholds"] == [0.1, 0.2]


def test_format_table():
  labels, scores = _data(6)
  labels[:, 0] = 0
  report = _report(labels, scores)
  table = reports.format_table(report)
  lines = table.splitlines()
  assert "n/a" in lines[2]  # Alpha has no positives
  assert all(name in table for name in CLASSES) and "macro" in table
  assert len({len(line) for line in lines}) == 1  # fixed width
  sub = reports.format_table(report, classes=["Delta"])
  assert "Delta" in sub and "Beta" not in sub

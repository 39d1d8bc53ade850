"""Bootstrap intervals (patient vs image resampling, fast metrics vs scikit-learn) and calibration."""

import time

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcxr import bootstrap
from jaxcxr import calibration
from jaxcxr import metrics


def _synthetic(n, *, prevalence=0.2, separation=1.0, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.random(n) < prevalence
  s = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + separation * y)))
  return y.astype(np.uint8), s


def _clustered(num_patients=100, per_patient=10, seed=0):
  """Each patient's images share a label and nearly the same score: strongly correlated images."""
  rng = np.random.default_rng(seed)
  y_p = rng.random(num_patients) < 0.3
  y_p[:2] = [True, False]
  s_p = rng.normal(size=num_patients) + 1.0 * y_p
  patients = np.repeat(np.arange(num_patients) * 7 + 3, per_patient)  # Arbitrary, non-contiguous ids.
  y = np.repeat(y_p, per_patient)
  s = np.repeat(s_p, per_patient) + 1e-3 * rng.normal(size=patients.size)
  perm = rng.permutation(patients.size)  # Images of a patient need not be adjacent.
  return y[perm].astype(np.uint8), s[perm], patients[perm]


# ----------------------------------------------------------------------------
# Fast metrics agree with scikit-learn.
# ----------------------------------------------------------------------------


def _check_against_sklearn(ours_auroc, ours_ap, y, s):
  """Our values vs scikit-learn's on the (possibly resampled) arrays y, s; True if AUROC was defined."""
  if 0 < y.sum() < y.size:
    assert ours_auroc == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  else:
    assert ours_auroc is None
  if y.sum():
    assert ours_ap == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
  else:
    assert ours_ap is None
  return 0 < y.sum() < y.size


def test_fast_metrics_agree_with_sklearn_with_ties_and_weights():
  rng = np.random.default_rng(1)
  defined = 0
  for trial in range(150):
    n = int(rng.integers(2, 80))
    y = rng.random(n) < rng.uniform(0.05, 0.95)
    # Every other trial draws scores from 5 values, so that ties are frequent.
    s = rng.integers(0, 5, n) / 4.0 if trial % 2 else rng.random(n)
    defined += _check_against_sklearn(bootstrap.auroc(y, s), bootstrap.average_precision(y, s), y, s)
    # Integer weights = a resampled data set (as one bootstrap sample is).
    w = rng.integers(0, 4, n)
    idx = np.repeat(np.arange(n), w)
    defined += _check_against_sklearn(bootstrap.auroc(y, s, w), bootstrap.average_precision(y, s, w),
                                      y[idx], s[idx])
  assert defined > 200


def test_threshold_metrics_match_binary_metrics():
  from jaxcxr import metrics  # pylint: disable=g-import-not-at-top
  y, s = _synthetic(500, seed=3)
  m = metrics.binary_metrics(labels=y, scores=s, threshold=0.6)
  for name in bootstrap.THRESHOLD_METRICS:
    assert bootstrap.threshold_metric(name, 0.6)(y, s) == pytest.approx(m[name], abs=1e-12)


def test_patient_draws_take_every_image_of_a_patient():
  inverse, g = bootstrap.group_index(np.array([5, 9, 5, 2, 9, 9]))
  assert g == 3 and inverse.tolist() == [1, 2, 1, 0, 2, 2]
  total = 0
  for counts in bootstrap.resample_counts(g, num_samples=50, seed=0, chunk_size=16):
    assert counts.shape[1] == 3 and (counts.sum(1) == 3).all()
    total += len(counts)
  assert total == 50


# ----------------------------------------------------------------------------
# Intervals.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["auroc", "auprc", "recall", "f1"])
def test_interval_contains_point_estimate(metric):
  y, s = _synthetic(400, seed=2)
  patients = np.arange(400) // 2
  fn = bootstrap.get_metric(metric, threshold=0.55)
  low, high = bootstrap.patient_bootstrap_ci(labels=y, scores=s, patients=patients, metric_fn=metric,
                                             threshold=0.55, num_samples=500)
  assert low <= fn(y, s) <= high
  assert 0.0 <= low < high <= 1.0


def test_interval_narrows_as_data_grows():
  widths = []
  for n in (200, 5000):
    y, s = _synthetic(n, seed=4)
    low, high = bootstrap.patient_bootstrap_ci(labels=y, scores=s, patients=np.arange(n), metric_fn="auroc",
                                               num_samples=500)
    widths.append(high - low)
  # Width shrinks like 1 / sqrt(n): about 5x here.
  assert widths[1] < 0.4 * widths[0]


@pytest.mark.parametrize("metric", ["auroc", "auprc", "f1"])
def test_patient_bootstrap_is_wider_than_image_bootstrap_for_correlated_images(metric):
  y, s, patients = _clustered()
  kw = dict(labels=y, scores=s, metric_fn=metric, threshold=0.5, num_samples=500, seed=1)
  p_low, p_high = bootstrap.patient_bootstrap_ci(patients=patients, **kw)
  i_low, i_high = bootstrap.image_bootstrap_ci(**kw)
  # 10 near-copies per patient: the image bootstrap pretends to have 10x the data, ~sqrt(10) narrower.
  assert p_high - p_low > 2.0 * (i_high - i_low)


def test_without_images_per_patient_correlation_both_agree():
  y, s = _synthetic(1000, seed=5)
  p = bootstrap.patient_bootstrap_ci(labels=y, scores=s, patients=np.arange(1000), metric_fn="auroc", seed=3)
  i = bootstrap.image_bootstrap_ci(labels=y, scores=s, metric_fn="auroc", seed=3)
  assert p == pytest.approx(i)


def test_undefined_metric_gives_none():
  y, s = np.zeros(50, np.uint8), np.linspace(0, 1, 50)
  patients = np.arange(50) // 5
  for metric in ("auroc", "auprc", "recall"):
    assert bootstrap.patient_bootstrap_ci(labels=y, scores=s, patients=patients, metric_fn=metric,
                                          threshold=0.5, num_samples=100) is None
  # F1 stays defined while something is predicted positive (it is then 0).
  assert bootstrap.patient_bootstrap_ci(labels=y, scores=s, patients=patients, metric_fn="f1", threshold=0.5,
                                        num_samples=100) == (0.0, 0.0)
  # One positive patient out of 10: it is missed by about (0.9)^10 = 35% of the samples.
  y[:5] = 1
  kw = dict(labels=y, scores=s, patients=patients, metric_fn="auroc", num_samples=400)
  assert bootstrap.patient_bootstrap_ci(**kw) is not None
  assert bootstrap.patient_bootstrap_ci(min_valid_fraction=0.9, **kw) is None
  values = bootstrap.bootstrap_values([("auroc", y, s)], groups=patients, num_samples=400)[0]
  assert 0.2 < np.isnan(values).mean() < 0.5


def test_plain_callable_metric_matches_the_fast_path():
  y, s, patients = _clustered(num_patients=30, per_patient=3, seed=6)
  kw = dict(labels=y, scores=s, patients=patients, num_samples=100, seed=2)
  slow = bootstrap.patient_bootstrap_ci(metric_fn=lambda yy, ss: skm.roc_auc_score(yy, ss)
                                        if 0 < yy.sum() < yy.size else None, **kw)
  assert slow == pytest.approx(bootstrap.patient_bootstrap_ci(metric_fn="auroc", **kw), abs=1e-12)


def test_class_intervals_cover_every_class_and_metric():
  rng = np.random.default_rng(7)
  labels = (rng.random((300, 3)) < [0.3, 0.05, 0.0]).astype(np.uint8)
  scores = rng.random((300, 3))
  out = bootstrap.class_intervals(labels=labels, scores=scores, patients=np.arange(300) // 3,
                                  thresholds=[0.5, 0.5, 0.5], classes=["a", "b", "c"], num_samples=200)
  assert set(out) == {"a", "b", "c"} and set(out["a"]) == {"auroc", "auprc", "recall", "f1"}
  assert all(v is not None for v in out["a"].values())
  assert out["c"]["auroc"] is None and out["c"]["recall"] is None


def test_bootstrap_is_fast_on_nih_sized_data():
  rng = np.random.default_rng(8)
  n = 25_000
  patients = np.sort(rng.integers(0, 3_000, n))
  y = rng.random(n) < 0.02
  s = rng.normal(size=n).astype(np.float32) + y
  for metric in ("auroc", "auprc"):
    start = time.perf_counter()
    ci = bootstrap.patient_bootstrap_ci(labels=y, scores=s, patients=patients, metric_fn=metric,
                                        num_samples=1000)
    elapsed = time.perf_counter() - start
    assert ci is not None and elapsed < 5.0, (metric, elapsed)


# ----------------------------------------------------------------------------
# Joint bootstrap of validation and test (threshold re-chosen per resample).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", metrics.THRESHOLD_RULES)
def test_weighted_threshold_choice_equals_choose_threshold_on_the_resampled_data(rule):
  rng = np.random.default_rng(11)
  n = 60
  y = rng.random(n) < 0.25
  s = np.round(rng.normal(size=n) + y, 1)  # Rounded: many tied scores.
  counts = rng.poisson(1.0, size=(40, n))  # Whole-number weights, zeros included.
  counts[0] = 0
  counts[0, ~y] = 1  # A row without positives.
  counts[1] = 0
  counts[1, y] = 2  # A row without negatives.
  got = bootstrap.choose_thresholds_weighted(labels=y, scores=s, weights=counts, rule=rule, target_recall=0.8)
  for b, c in enumerate(counts):
    idx = np.repeat(np.arange(n), c)
    want = metrics.choose_threshold(labels=y[idx], scores=s[idx], rule=rule, target_recall=0.8)
    assert got[b] == want, (b, got[b], want)


def _val_test(*, val_pos, seed=0):
  """Two classes; validation holds `val_pos` positive patients of class 0, test many."""
  rng = np.random.default_rng(seed)
  def part(n_patients, pos_patients):
    patients = np.repeat(np.arange(n_patients), 2)
    y = np.zeros((2 * n_patients, 2), np.uint8)
    y[:2 * pos_patients:2, 0] = 1  # One positive image in each of the first pos_patients patients.
    y[:, 1] = rng.random(2 * n_patients) < 0.3
    s = 1 / (1 + np.exp(-(rng.normal(size=y.shape) * 1.2 + 2.0 * y - 1.5)))
    return y, s, patients
  return part(150, val_pos), part(600, 60)


def test_joint_recall_interval_at_least_as_wide_as_fixed_with_few_validation_positives():
  (vy, vs, vp), (ty, ts, tp) = _val_test(val_pos=4)
  kw = dict(val_labels=vy, val_scores=vs, val_patients=vp, test_labels=ty, test_scores=ts, test_patients=tp,
            classes=["rare", "common"], num_samples=400, seed=3)
  joint = bootstrap.joint_threshold_intervals(**kw)
  thresholds = metrics.select_thresholds(labels=vy, scores=vs)
  fixed = bootstrap.class_intervals(labels=ty, scores=ts, patients=tp, thresholds=thresholds,
                                    classes=["rare", "common"], metrics=("recall",), num_samples=400, seed=3)
  width = lambda ci: ci[1] - ci[0]
  assert width(joint["rare"]["recall"]) >= width(fixed["rare"]["recall"])
  assert width(joint["rare"]["recall"]) > 1.5 * width(fixed["rare"]["recall"])  # Four positives: very uncertain.
  low, high = joint["rare"]["threshold"]
  assert low < thresholds[0] < high or low <= thresholds[0] <= high and low < high


def test_joint_with_validation_fixed_reproduces_the_fixed_threshold_path():
  (vy, vs, vp), (ty, ts, tp) = _val_test(val_pos=10, seed=1)
  for rule in ("max_f1", "target_recall"):
    joint = bootstrap.joint_threshold_intervals(
        val_labels=vy, val_scores=vs, val_patients=vp, test_labels=ty, test_scores=ts, test_patients=tp,
        classes=["a", "b"], rule=rule, metrics=("recall", "precision", "f1"), num_samples=300, seed=5,
        resample_validation=False)
    thresholds = metrics.select_thresholds(labels=vy, scores=vs, rule=rule)
    fixed = bootstrap.class_intervals(labels=ty, scores=ts, patients=tp, thresholds=thresholds, classes=["a", "b"],
                                      metrics=("recall", "precision", "f1"), num_samples=300, seed=5)
    for c in ("a", "b"):
      for m in ("recall", "precision", "f1"):
        assert joint[c][m] == fixed[c][m], (rule, c, m)
      assert joint[c]["threshold"] == (thresholds[("a", "b").index(c)],) * 2


def test_joint_bootstrap_is_fast_on_demo_sized_splits():
  # The demo's phantom test split holds about 4,600 images, its validation about 1,500; 14 classes.
  rng = np.random.default_rng(9)
  def part(n, n_patients):
    y = rng.random((n, 14)) < 0.05
    return y, rng.normal(size=(n, 14)) + y, np.sort(rng.integers(0, n_patients, n))
  (vy, vs, vp), (ty, ts, tp) = part(1_500, 500), part(4_600, 1_500)
  start = time.perf_counter()
  values, chosen = bootstrap.joint_threshold_values(val_labels=vy, val_scores=vs, val_patients=vp, test_labels=ty,
                                                    test_scores=ts, test_patients=tp, num_samples=1000)
  elapsed = time.perf_counter() - start
  assert values.shape == (3, 14, 1000) and chosen.shape == (14, 1000) and np.isfinite(values).all()
  assert elapsed < 15.0, elapsed  # About 2.5 s on 2 busy cores.


# ----------------------------------------------------------------------------
# Calibration.
# ----------------------------------------------------------------------------


def _overconfident(n, seed):
  """True logit z; labels drawn from sigmoid(z); the model reports 4 z (over-confident)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(scale=1.5, size=(n, 2)) - 1.0
  y = (rng.random((n, 2)) < 1 / (1 + np.exp(-z))).astype(np.uint8)
  return y, 1 / (1 + np.exp(-4 * z))


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_on_overconfident_scores_improves_held_out_brier_and_nll(method):
  val_y, val_p = _overconfident(3000, seed=0)
  test_y, test_p = _overconfident(3000, seed=1)
  cal = calibration.fit_calibrator(method, labels=val_y, probs=val_p)
  out = cal.apply(test_p)
  for c in range(2):
    assert calibration.brier_score(test_y[:, c], out[:, c]) < calibration.brier_score(test_y[:, c], test_p[:, c])
    assert calibration.log_loss(test_y[:, c], out[:, c]) < 0.9 * calibration.log_loss(test_y[:, c], test_p[:, c])
    # Monotone: the ranking (AUROC) is unchanged.
    assert skm.roc_auc_score(test_y[:, c], out[:, c]) == pytest.approx(skm.roc_auc_score(test_y[:, c], test_p[:, c]))
  if method == "temperature":
    temps = [v["temperature"] for v in cal.params(["a", "b"]).values()]
    assert temps == pytest.approx([4.0, 4.0], rel=0.15)
  rc_before = calibration.reliability_curve(test_y[:, 0], test_p[:, 0])
  rc_after = calibration.reliability_curve(test_y[:, 0], out[:, 0])
  assert rc_after["ece"] < rc_before["ece"]


def test_calibration_degenerate_classes_and_identity():
  y = np.zeros((20, 2), np.uint8)
  y[:3, 0] = 1  # Class 1 has no positives.
  p = np.linspace(0.01, 0.99, 40).reshape(20, 2)
  for method in ("temperature", "platt"):
    cal = calibration.fit_calibrator(method, labels=y, probs=p)
    np.testing.assert_allclose(cal.apply(p)[:, 1], p[:, 1], atol=1e-9)
    assert np.isfinite(cal.apply(p)).all()
  np.testing.assert_array_equal(calibration.fit_calibrator("none", labels=y, probs=p).apply(p), p)
  with pytest.raises(calibration.CalibrationError, match="isotonic"):
    calibration.fit_calibrator("isotonic", labels=y, probs=p)
  # Saturated float32 probabilities (0 and 1) stay finite.
  sat = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
  assert np.isfinite(calibration.fit_calibrator("temperature", labels=[[1, 0], [0, 1]], probs=sat).apply(sat)).all()


def test_reliability_diagram_png(tmp_path):
  y, p = _overconfident(500, seed=2)
  cal = calibration.fit_calibrator("temperature", labels=y, probs=p)
  path = tmp_path / "reliability.png"
  calibration.plot_reliability(path, labels=y[:, 0], probs=p[:, 0], calibrated=cal.apply(p)[:, 0],
                               class_name="Hernia", method="temperature")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

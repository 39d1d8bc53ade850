"""Tests for the no-learning difficulty controls (jaxcxr.difficulty)."""

import numpy as np
import pytest

from jaxcxr import difficulty
from jaxcxr.data import phantom


def _set(n=600, size=32, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(60, 120, size=(n, size, size)).astype(np.uint8)
  labels = np.zeros((n, 2), np.uint8)
  labels[: n // 5, 0] = 1  # Finding A: a bright 4x4 spot at a fixed place.
  images[: n // 5, 20:24, 8:12] = 200
  labels[rng.permutation(n)[: n // 5], 1] = 1  # Finding B: nothing in the pixels.
  patients = np.arange(n) // 2
  test = patients % 4 == 0
  return images, labels, patients, test


def test_window_and_logreg_find_a_fixed_template_and_not_noise():
  images, labels, patients, test = _set()
  r = difficulty.controls(images=images, labels=labels, train=~test, test=test, patients=patients,
                          classes=("A", "B"))
  assert r["A"]["window_auroc"] > 0.99 and r["A"]["logreg_auroc"] > 0.95
  assert "x=8" in r["A"]["window"] or "x=4" in r["A"]["window"] or "x=6" in r["A"]["window"]
  assert abs(r["B"]["window_auroc"] - 0.5) < 0.15 and abs(r["B"]["logreg_auroc"] - 0.5) < 0.15
  assert r["A"]["test_positives"] == int(labels[test, 0].sum())


def test_window_direction_is_chosen_on_train_val():
  images, labels, patients, test = _set()
  images = 255 - images  # The spot is now dark: lower is positive.
  r = difficulty.controls(images=images, labels=labels, train=~test, test=test, patients=patients,
                          classes=("A", "B"), findings=["A"])
  assert r["A"]["window_auroc"] > 0.99 and "lower is positive" in r["A"]["window"]
  assert set(r) == {"A"}


def test_clean_labels_score_the_same_predictions():
  images, labels, patients, test = _set()
  noisy = labels.copy()
  noisy[: 30, 0] = 0  # Positives written negative.
  r = difficulty.controls(images=images, labels=noisy, train=~test, test=test, patients=patients,
                          classes=("A", "B"), findings=["A"], clean_labels=labels)
  assert r["A"]["window_auroc_clean"] > r["A"]["window_auroc"]


def test_one_class_test_split_gives_none():
  images, labels, patients, test = _set()
  labels[test, 0] = 0
  r = difficulty.controls(images=images, labels=labels, train=~test, test=test, patients=patients,
                          classes=("A", "B"), findings=["A"])
  assert r["A"]["window_auroc"] is None and r["A"]["logreg_auroc"] is None


def test_controls_for_a_phantom_folder_and_study_rows(tmp_path):
  out = str(tmp_path / "p")
  phantom.generate(out, num_images=400, image_size=32, seed=1, prevalence={"Hernia": 0.2}, progress=False)
  r = difficulty.controls_for_folder(out, findings=["Hernia"], clean_label_file=phantom.CLEAN_LABEL_FILE)
  h = r["Hernia"]
  assert h["test_positives"] > 5
  for k in ("window_auroc", "logreg_auroc", "window_auroc_clean", "logreg_auroc_clean"):
    assert 0.0 <= h[k] <= 1.0, k
  rows = difficulty.control_rows(r, target="Hernia")
  assert [row["arm"] for row in rows] == ["control: window", "control: logreg"]
  assert rows[0]["auroc"] == h["window_auroc"] and rows[1]["auroc"] == h["logreg_auroc"]
  with pytest.raises(KeyError):
    difficulty.control_rows(r, target="Pneumothorax")


def test_downsample_averages_blocks():
  images = np.zeros((1, 32, 32), np.uint8)
  images[0, :2, :2] = 40
  x = difficulty.downsample(images)
  assert x.shape == (1, 256) and x[0, 0] == pytest.approx(40.0) and x[0, 1:].max() == 0

"""Tests for the synthetic phantom dataset (jaxcxr.data.phantom) and its CLI (jaxcxr.phantom)."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from jaxcxr.data import phantom
from jaxcxr.data.nih import CLASSES, LABEL_FILE, NO_FINDING, TEST_LIST, TRAIN_VAL_LIST

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_images=300, image_size=32, seed=0, progress=False)


def read_rows(directory):
  with open(os.path.join(directory, LABEL_FILE), newline="") as f:
    lines = f.read().splitlines()
  return lines[0], list(csv.reader(lines[1:]))


def read_list(directory, name):
  with open(os.path.join(directory, name)) as f:
    return [line for line in f.read().splitlines() if line]


def label_matrix(rows):
  index = {c: i for i, c in enumerate(CLASSES)}
  y = np.zeros((len(rows), len(CLASSES)), bool)
  for i, row in enumerate(rows):
    if row[1] != NO_FINDING:
      for name in row[1].split("|"):
        y[i, index[name]] = True
  return y


def pixels(directory, name):
  with Image.open(os.path.join(directory, "images", name)) as im:
    return np.asarray(im)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("phantom_small"))
  summary = phantom.generate(out, **SMALL)
  return out, summary


# ----------------------------------------------------------------------------------------------------------
# Layout.
# ----------------------------------------------------------------------------------------------------------


def test_label_file_has_nih_header_and_rows(small):
  out, summary = small
  header, rows = read_rows(out)
  assert header == HEADER
  assert len(rows) == SMALL["num_images"] == summary["num_images"]
  for row in rows:
    assert len(row) == 11, row
    name, found, followup, patient, age, gender, view, w, h, sx, sy = row
    assert re.fullmatch(r"\d{8}_\d{3}\.png", name), name
    assert int(name[:8]) == int(patient) and int(name[9:12]) == int(followup)
    assert re.fullmatch(r"\d+", age) and 0 < int(age) < 120
    assert gender in ("M", "F") and view in ("PA", "AP")
    assert int(w) > 1000 and int(h) > 1000 and float(sx) == float(sy) > 0
    labels = found.split("|")
    if NO_FINDING in labels:
      assert labels == [NO_FINDING], "No Finding must be exclusive"
    else:
      assert set(labels) <= set(CLASSES) and len(set(labels)) == len(labels)
  assert len({r[0] for r in rows}) == len(rows)
  assert summary["num_patients"] == len({r[3] for r in rows})


def test_patients_have_consecutive_followups_and_fixed_sex(small):
  out, _ = small
  _, rows = read_rows(out)
  by_patient = {}
  for row in rows:
    by_patient.setdefault(int(row[3]), []).append(row)
  counts = [len(v) for v in by_patient.values()]
  assert 1 <= min(counts) and max(counts) <= 6 and max(counts) > 1
  for studies in by_patient.values():
    assert [int(r[2]) for r in studies] == list(range(len(studies)))
    assert len({r[5] for r in studies}) == 1
    ages = [int(r[4]) for r in studies]
    assert ages == sorted(ages)


def test_every_image_exists_as_8bit_grey_at_size(small):
  out, _ = small
  _, rows = read_rows(out)
  names = {r[0] for r in rows}
  assert set(os.listdir(os.path.join(out, "images"))) == names
  for name in sorted(names):
    with Image.open(os.path.join(out, "images", name)) as im:
      assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32)


def test_split_is_patient_disjoint_and_covers_all_images(small):
  out, summary = small
  _, rows = read_rows(out)
  patient = {r[0]: r[3] for r in rows}
  train_val, test = read_list(out, TRAIN_VAL_LIST), read_list(out, TEST_LIST)
  assert sorted(train_val + test) == sorted(patient)
  assert not set(train_val) & set(test)
  assert not {patient[n] for n in train_val} & {patient[n] for n in test}
  assert 0.15 < len(test) / len(rows) < 0.31  # NIH: 22.8%.
  assert (summary["num_train_val"], summary["num_test"]) == (len(train_val), len(test))


def test_marker_records_params_and_counts(small):
  out, summary = small
  assert not os.path.exists(os.path.join(out, ".phantom_incomplete"))
  with open(os.path.join(out, phantom.MARKER)) as f:
    stored = json.load(f)
  assert stored["params"]["num_images"] == 300 and stored["params"]["image_size"] == 32
  assert stored["params"]["prevalence"] == phantom.DEFAULT_PREVALENCE
  _, rows = read_rows(out)
  y = label_matrix(rows)
  assert stored["summary"]["positives"] == {c: int(y[:, j].sum()) for j, c in enumerate(CLASSES)}
  assert stored["summary"]["positives"] == summary["positives"]
  assert summary["no_finding"] == int((~y.any(1)).sum())


def test_default_prevalence_is_nih():
  assert tuple(phantom.DEFAULT_PREVALENCE) == CLASSES
  assert phantom.DEFAULT_PREVALENCE["Infiltration"] == pytest.approx(0.1774, abs=5e-4)
  assert phantom.DEFAULT_PREVALENCE["Hernia"] == pytest.approx(227 / 112120, abs=5e-5)
  assert phantom.DEFAULT_PREVALENCE["Pneumothorax"] == pytest.approx(5302 / 112120, abs=5e-5)


# ----------------------------------------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_whatever_the_worker_count(small, tmp_path):
  out, _ = small
  again = str(tmp_path / "again")
  phantom.generate(again, workers=2, **SMALL)
  for name in (LABEL_FILE, TRAIN_VAL_LIST, TEST_LIST, phantom.CLEAN_LABEL_FILE, phantom.BBOX_FILE):
    with open(os.path.join(out, name), "rb") as f1, open(os.path.join(again, name), "rb") as f2:
      assert f1.read() == f2.read(), name
  for name in os.listdir(os.path.join(out, "images")):
    with open(os.path.join(out, "images", name), "rb") as f1, open(os.path.join(again, "images", name), "rb") as f2:
      assert f1.read() == f2.read(), name


def test_other_seed_differs(small, tmp_path):
  out, _ = small
  other = str(tmp_path / "other")
  phantom.generate(other, **dict(SMALL, seed=1))
  _, rows0 = read_rows(out)
  _, rows1 = read_rows(other)
  assert rows0 != rows1
  assert not np.array_equal(pixels(out, "00000001_000.png"), pixels(other, "00000001_000.png"))


def read_label_matrix(directory, name):
  with open(os.path.join(directory, name), newline="") as f:
    rows = list(csv.reader(f.read().splitlines()[1:]))
  return rows, label_matrix(rows)


def test_label_noise_changes_labels_not_pixels_and_clean_labels_are_written_beside(small, tmp_path):
  out, noisy = small  # Label noise is on by default.
  assert noisy["params"]["label_noise"] == 1.0
  clean_dir = str(tmp_path / "clean")
  clean = phantom.generate(clean_dir, **dict(SMALL, label_noise=0.0))
  rows_n, y_noisy = read_label_matrix(out, LABEL_FILE)
  rows_c, y_clean = read_label_matrix(out, phantom.CLEAN_LABEL_FILE)
  assert [r[0] for r in rows_n] == [r[0] for r in rows_c]
  assert [r[2:] for r in rows_n] == [r[2:] for r in rows_c]  # Only the labels differ.
  assert (y_noisy != y_clean).any()
  # Without noise the label file is the clean file, and the painted labels are the same either way.
  _, y_plain = read_label_matrix(clean_dir, LABEL_FILE)
  _, y_plain_clean = read_label_matrix(clean_dir, phantom.CLEAN_LABEL_FILE)
  assert np.array_equal(y_plain, y_plain_clean) and np.array_equal(y_plain, y_clean)
  assert noisy["positives_in_images"] == clean["positives"] == {c: int(y_clean[:, j].sum())
                                                                for j, c in enumerate(CLASSES)}
  assert noisy["written_negative"] == {c: int((y_clean[:, j] & ~y_noisy[:, j]).sum()) for j, c in enumerate(CLASSES)}
  assert noisy["written_positive"] == {c: int((~y_clean[:, j] & y_noisy[:, j]).sum()) for j, c in enumerate(CLASSES)}
  for row in rows_n[:50]:
    assert np.array_equal(pixels(out, row[0]), pixels(clean_dir, row[0]))


def test_written_labels_differ_from_clean_at_the_configured_rates():
  # On 200,000 images (labels only, no pixels): per class, the share of painted positives written negative
  # and of negatives written positive match noise_rates within 4 binomial standard errors.
  rng = np.random.default_rng(0)
  patients, _ = phantom._sample_studies(200_000, rng)
  prevalence = phantom._resolve_prevalence({"Hernia": 0.018})
  clean = phantom._sample_labels(patients, prevalence, rng)
  written = phantom._add_label_noise(clean, prevalence, 1.0, rng)
  rates = phantom.noise_rates(prevalence)
  for j, c in enumerate(CLASSES):
    miss, spurious = rates[c]
    pos, neg = clean[:, j], ~clean[:, j]
    assert miss == phantom.LABEL_NOISE[c][0] > 0
    for observed, p, n in [(~written[pos, j]).mean(), miss, pos.sum()], [written[neg, j].mean(), spurious, neg.sum()]:
      assert abs(observed - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (c, observed, p)
    # More positives written as negative than the reverse.
    assert (pos & ~written[:, j]).sum() > (neg & written[:, j]).sum(), c
  # The scale multiplies the rates; 0 writes the painted labels.
  assert np.array_equal(phantom._add_label_noise(clean, prevalence, 0.0, rng), clean)
  assert phantom.noise_rates(prevalence, 2.0)["Hernia"][0] == 2 * rates["Hernia"][0]


# ----------------------------------------------------------------------------------------------------------
# ensure().
# ----------------------------------------------------------------------------------------------------------


def test_ensure_reuses_regenerates_and_refuses(tmp_path):
  out = str(tmp_path / "cache")
  params = dict(num_images=60, image_size=32, seed=3, progress=False)
  first = phantom.ensure(out, **params)
  image = os.path.join(out, "images", "00000001_000.png")
  before = os.stat(image).st_mtime_ns
  reused = phantom.ensure(out, **params)
  assert os.stat(image).st_mtime_ns == before
  assert reused["positives"] == first["positives"] and reused["num_images"] == 60

  with pytest.raises(ValueError) as e:
    phantom.ensure(out, **dict(params, image_size=48))
  message = str(e.value)
  assert out in message and '"image_size": 32' in message and '"image_size": 48' in message
  assert "data.dir" in message and "delete" in message
  with pytest.raises(ValueError):
    phantom.ensure(out, **dict(params, prevalence={"Hernia": 0.01}))
  assert os.stat(image).st_mtime_ns == before


def test_ensure_regenerates_a_folder_of_another_generator_version(tmp_path):
  out = str(tmp_path / "cache")
  params = dict(num_images=60, image_size=32, seed=3, progress=False)
  phantom.ensure(out, **params)
  marker = os.path.join(out, phantom.MARKER)
  with open(marker) as f:
    stored = json.load(f)
  stored["params"]["generator_version"] = phantom.GENERATOR_VERSION - 1
  stored["summary"]["num_images"] = -1  # Reused, this would show.
  with open(marker, "w") as f:
    json.dump(stored, f)
  stale = os.path.join(out, "images", "00000001_000.png")
  Image.new("L", (32, 32)).save(stale)
  summary = phantom.ensure(out, **params)
  assert summary["num_images"] == 60 and summary["params"]["generator_version"] == phantom.GENERATOR_VERSION
  assert pixels(out, "00000001_000.png").std() > 10  # The stale blank image was rendered again.
  assert phantom.read_summary(out)["params"]["generator_version"] == phantom.GENERATOR_VERSION



def test_ensure_regenerates_an_interrupted_run(tmp_path, monkeypatch):
  out = str(tmp_path / "cache")
  params = dict(num_images=60, image_size=32, seed=3, progress=False, workers=1)
  render_chunk = phantom._render_chunk
  calls = []

  def crash_on_second_chunk(job):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return render_chunk(job)

  monkeypatch.setattr(phantom, "_render_chunk", crash_on_second_chunk)
  with pytest.raises(KeyboardInterrupt):
    phantom.generate(out, **dict(params, num_images=200))
  monkeypatch.setattr(phantom, "_render_chunk", render_chunk)
  assert not os.path.exists(os.path.join(out, phantom.MARKER))
  assert phantom.read_summary(out) is None
  left = os.listdir(os.path.join(out, "images"))
  assert 0 < len(left) < 200
  stale = os.path.join(out, "images", "99999999_000.png")
  Image.new("L", (8, 8)).save(stale)

  summary = phantom.ensure(out, **params)  # Regenerated from scratch: stale images go.
  assert not os.path.exists(stale)
  assert os.path.exists(os.path.join(out, phantom.MARKER))
  assert summary["num_images"] == 60
  _, rows = read_rows(out)
  assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(r[0] for r in rows)
  reference = str(tmp_path / "reference")
  phantom.generate(reference, **params)
  for row in rows:
    assert np.array_equal(pixels(out, row[0]), pixels(reference, row[0]))


def test_generate_refuses_a_folder_with_other_data(tmp_path):
  out = tmp_path / "real_nih"
  (out / "images").mkdir(parents=True)
  (out / LABEL_FILE).write_text(HEADER + "\n")
  (out / "images" / "00000001_000.png").write_bytes(b"not ours")
  with pytest.raises(ValueError, match="refusing"):
    phantom.generate(str(out), **dict(SMALL, num_images=10))
  assert (out / "images" / "00000001_000.png").read_bytes() == b"not ours"


def test_bad_parameters_raise(tmp_path):
  with pytest.raises(ValueError, match="unknown class"):
    phantom.generate(str(tmp_path / "x"), num_images=10, image_size=32, prevalence={"Hernias": 0.1})
  with pytest.raises(ValueError):
    phantom.generate(str(tmp_path / "x"), num_images=10, image_size=32, prevalence={"Hernia": 1.5})
  with pytest.raises(ValueError):
    phantom.generate(str(tmp_path / "x"), num_images=10, image_size=32, label_noise=-0.1)


# ----------------------------------------------------------------------------------------------------------
# Label statistics.
# ----------------------------------------------------------------------------------------------------------


def test_prevalences_near_targets(tmp_path):
  out = str(tmp_path / "large")
  n = 3000
  summary = phantom.generate(out, num_images=n, image_size=32, seed=5, prevalence={"Hernia": 0.01},
                             progress=False)
  _, rows = read_rows(out)
  y = label_matrix(rows)
  # Labels are clustered by patient (chronic ones persist), which inflates the binomial variance by at most
  # the design effect E[m^2] / E[m] of the patient sizes m.
  _, m = np.unique([r[3] for r in rows], return_counts=True)
  design_effect = (m ** 2).sum() / m.sum()
  for j, c in enumerate(CLASSES):
    p = 0.01 if c == "Hernia" else phantom.DEFAULT_PREVALENCE[c]
    sigma = np.sqrt(design_effect * p * (1 - p) / n)
    assert abs(y[:, j].mean() - p) < 4 * sigma + 0.002, (c, y[:, j].mean(), p)
  assert summary["positives"]["Hernia"] > 5
  assert 0.45 < (~y.any(1)).mean() < 0.65  # NIH: 53.8% No Finding.


def test_cooccurrence_and_chronic_persistence():
  rng = np.random.default_rng(0)
  patients, _ = phantom._sample_studies(100_000, rng)
  y = phantom._sample_labels(patients, phantom._resolve_prevalence(None), rng)
  i = {c: k for k, c in enumerate(CLASSES)}

  def lift(a, b):
    return (y[:, i[a]] & y[:, i[b]]).mean() / (y[:, i[a]].mean() * y[:, i[b]].mean())

  for a, b in [("Effusion", "Atelectasis"), ("Effusion", "Cardiomegaly"), ("Effusion", "Edema"),
               ("Pneumonia", "Infiltration"), ("Pneumonia", "Consolidation")]:
    assert lift(a, b) > 1.8, (a, b, lift(a, b))
  same = patients[1:] == patients[:-1]

  def persistence(c):
    was = y[:-1, i[c]] & same
    return y[1:, i[c]][was].mean()

  for c in phantom.CHRONIC:
    assert persistence(c) > 0.65, (c, persistence(c))
  for c in ("Pneumonia", "Pneumothorax", "Consolidation", "Edema"):
    assert persistence(c) < 0.4, (c, persistence(c))


# ----------------------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------------------


def test_images_look_like_chest_films():
  # Dark air at the top corners, dark lungs either side of a bright mediastinum, bright abdomen below.
  imgs = np.stack([phantom._render(64, 0, p, 0, (), p % 2 == 0, p % 3 == 0) for p in range(1, 21)]).astype(float)
  mean = imgs.mean(0)
  corners = mean[:6, :6].mean(), mean[:6, -6:].mean()
  lungs = mean[20:36, 12:22].mean(), mean[20:36, 42:52].mean()
  mediastinum = mean[20:36, 29:35].mean()
  abdomen = mean[56:, 24:40].mean()
  assert max(corners) < 60
  assert max(lungs) + 40 < mediastinum
  assert max(lungs) + 40 < abdomen
  assert imgs.std(axis=(1, 2)).min() > 30  # Not blank.


@pytest.mark.parametrize("size", [64, 128])
def test_each_finding_has_its_own_visible_signature(size):
  # Same patient and study with and without one label: only that finding's pixels change, visibly.
  for c in CLASSES:
    for patient in (11, 12, 13):
      with_c = phantom._render(size, 0, patient, 0, (c,), False, False).astype(int)
      without = phantom._render(size, 0, patient, 0, (), False, False).astype(int)
      diff = np.abs(with_c - without)
      assert diff.max() >= 8, (c, patient, diff.max())
      assert (diff > 4).mean() < 0.6, (c, patient)


def test_hernia_is_a_small_retrocardiac_density_above_the_diaphragm():
  size = 64
  deltas, outside = [], []
  for patient in range(1, 41):
    with_h = phantom._render(size, 0, patient, 0, ("Hernia",), False, False).astype(float)
    without = phantom._render(size, 0, patient, 0, (), False, False).astype(float)
    diff = with_h - without
    deltas.append(diff[34:48, 26:40].mean())  # Lower midline, just above the diaphragm.
    outside.append(np.abs(diff[:28]).max())  # Upper half of the film.
    changed = np.abs(diff) > 4
    assert changed.sum() < 0.03 * size * size  # Small.
  assert np.mean(deltas) > 1.0 and np.mean(np.asarray(deltas) > 0) >= 0.8
  assert max(outside) == 0


def test_hernia_images_show_a_brighter_spot_low_in_the_midline(tmp_path):
  # Version 3 moved away from a bright disk at a fixed spot (a fixed window separated it with AUROC 0.93);
  # on average the lower midline of a Hernia image still holds a brighter spot (the sac) than a negative's
  # (fat pads put one in 35% of negatives). The air cap is checked on paired renders below.
  out = str(tmp_path / "hernia")
  phantom.generate(out, num_images=300, image_size=64, seed=2, prevalence={"Hernia": 0.3}, progress=False)
  _, rows = read_rows(out)
  y = label_matrix(rows)[:, CLASSES.index("Hernia")]
  assert 40 < y.sum() < 150
  a = np.stack([pixels(out, row[0]) for row in rows]).astype(float)
  region = a[:, 30:50, 24:42].reshape(len(a), -1)
  bright = np.percentile(region, 95, axis=1) - np.median(region, axis=1)
  assert bright[y].mean() > bright[~y].mean() + 3.0


def test_a_hernias_air_cap_lies_above_its_sac():
  for patient in range(1, 31):
    with_h = phantom._render(64, 0, patient, 0, ("Hernia",), False, False).astype(float)
    without = phantom._render(64, 0, patient, 0, (), False, False).astype(float)
    diff = with_h - without
    assert diff.max() >= 8 and diff.min() <= -8, patient
    dark_rows, bright_rows = np.nonzero(diff < -4)[0], np.nonzero(diff > 4)[0]
    assert dark_rows.mean() < bright_rows.mean(), patient  # Air above the fluid level, the sac below.


@pytest.mark.parametrize("finding", phantom.BOXED)
def test_a_finding_rendered_alone_lies_inside_its_box(finding):
  # The box written for a finding holds at least 90% of the pixel change the finding causes (same patient
  # and study rendered without it), for patients of both sexes and both projections.
  for patient in range(1, 9):
    study = (patient, 0, (finding,), patient % 2 == 0, patient % 3 == 0)
    (with_f,), (boxes,) = phantom._render_batch(64, 0, [study], with_boxes=True)
    without = phantom._render_batch(64, 0, [study[:2] + ((),) + study[3:]])[0]
    change = np.abs(with_f.astype(float) - without)
    x, y, w, h = boxes[finding]
    assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w * h < 64 * 64 * 0.6, (finding, boxes)
    assert change.sum() > 0
    assert change[y:y + h, x:x + w].sum() >= 0.9 * change.sum(), (finding, patient)


def test_box_file_covers_every_test_finding_in_nih_format(tmp_path):
  out = str(tmp_path / "boxes")
  phantom.generate(out, num_images=240, image_size=48, seed=4, prevalence={"Hernia": 0.15}, progress=False)
  with open(os.path.join(out, phantom.BBOX_FILE), newline="") as f:
    lines = f.read().splitlines()
  assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"  # NIH's BBox_List_2017.csv header.
  boxes = {}
  for row in csv.reader(lines[1:]):
    name, finding, x, y, w, h = row
    x, y, w, h = (float(v) for v in (x, y, w, h))
    assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 48 and y + h <= 48, row
    boxes.setdefault(finding, set()).add(name)
  test = set(read_list(out, TEST_LIST))
  rows, clean = read_label_matrix(out, phantom.CLEAN_LABEL_FILE)
  assert set().union(*boxes.values()) <= test  # Boxes for the test split only.
  for finding in ("Hernia", "Pneumothorax"):
    positives = {r[0] for r, yes in zip(rows, clean[:, CLASSES.index(finding)]) if yes and r[0] in test}
    assert len(positives) >= 3, finding
    assert positives == boxes[finding], finding  # Every test image painted with it, and no other.
  for finding, names in boxes.items():
    assert finding in phantom.BOXED
    painted = {r[0] for r, yes in zip(rows, clean[:, CLASSES.index(finding)]) if yes}
    assert names <= painted, finding


def test_look_alikes_appear_in_negatives_at_their_rates():
  # Per-study draws over 2,000 studies of 2,000 patients without any finding.
  a = [phantom._study_setup(64, 0, p, 0, (), p % 2 == 0, p % 4 == 0) for p in range(1, 2001)]
  rates = phantom._LOOK_ALIKE_RATES
  def share(values):
    return np.mean([v > 0 for v in values])
  assert abs(share([s.fat_pad for s in a]) - rates["fat_pad"]) < 0.04
  assert abs(share([s.gastric_amp for s in a]) - rates["gastric_bubble"] * 0.85) < 0.04
  assert abs(share([s.rc_amp for s in a]) - rates["retrocardiac_air"] * (1 - rates["fat_pad"])) < 0.03
  assert not any(s.rc_amp and s.fat_pad for s in a)  # Never both halves of a hernia's signature.
  assert abs(share([s.scap_amp for s in a]) - rates["scapular_edge"]) < 0.04
  expected_folds = rates["skin_fold"] * (0.75 + 0.25 * 2.5)
  assert abs(share([s.fold_amp for s in a]) - expected_folds) < 0.03
  assert all(share(s.dot_amp) > 0 for s in a)  # Vessels seen end-on on every film.
  assert set(phantom.LOOK_ALIKES) == set(CLASSES) and all(phantom.LOOK_ALIKES.values())


def test_follow_ups_share_anatomy_and_findings_persist():
  anatomy = ("lung_cu", "heart_w", "dome_h", "fat_pad", "gastric_r", "scap_u", "body_w")
  first, later = (phantom._study_setup(64, 0, 7, f, ("Hernia",), False, False) for f in (0, 3))
  assert all(getattr(first, k) == getattr(later, k) for k in anatomy)
  # The Hernia keeps its place between follow-ups (its contrast may change).
  boxes = [phantom._render_batch(64, 0, [(7, f, ("Hernia",), False, False)], with_boxes=True)[1][0]["Hernia"]
           for f in range(4)]
  centres = np.asarray([(x + w / 2, y + h / 2) for x, y, w, h in boxes])
  assert np.abs(centres - centres.mean(0)).max() <= 3.0, boxes
  others = [phantom._render_batch(64, 0, [(p, 0, ("Hernia",), False, False)], with_boxes=True)[1][0]["Hernia"]
            for p in range(20, 40)]
  assert np.ptp([x + w / 2 for x, _, w, _ in others]) >= 4  # Varies between patients.
  assert len({(w, h) for _, _, w, h in others}) >= 5  # Size and shape vary too.


# ----------------------------------------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------------------------------------


def test_cli_writes_dataset_and_prints_table(tmp_path):
  out = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "jaxcxr.phantom", f"--out={out}", "--num_images=40", "--image_size=32",
       "--hernia_prevalence=0.05", "--noprogress"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert "patients:" in result.stdout and "Hernia" in result.stdout and "No Finding" in result.stdout
  with open(out / phantom.MARKER) as f:
    stored = json.load(f)
  assert stored["params"]["prevalence"]["Hernia"] == 0.05 and stored["params"]["num_images"] == 40


def test_cli_difficulty_and_grid_reuse_the_set_and_write_json(tmp_path):
  out = tmp_path / "cli"
  flags = [f"--out={out}", "--num_images=300", "--image_size=32", "--hernia_prevalence=0.2", "--noprogress"]
  phantom.generate(str(out), num_images=300, image_size=32, prevalence={"Hernia": 0.2}, progress=False)
  before = os.stat(out / "images" / "00000001_000.png").st_mtime_ns
  result = subprocess.run(
      [sys.executable, "-m", "jaxcxr.phantom", *flags, "--difficulty", "--findings=Hernia",
       f"--grid={tmp_path / 'grid.png'}"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert os.stat(out / "images" / "00000001_000.png").st_mtime_ns == before  # Reused, not regenerated.
  with open(out / "difficulty.json") as f:
    stored = json.load(f)
  assert set(stored["controls"]) == {"Hernia"} and "Hernia" in result.stdout and "window" in result.stdout
  assert 0 <= stored["controls"]["Hernia"]["logreg_auroc"] <= 1
  with Image.open(tmp_path / "grid.png") as im:
    assert im.width == 6 * 32 * 4 and im.height >= 32 * 4
  bad = subprocess.run([sys.executable, "-m", "jaxcxr.phantom", *flags, "--difficulty", "--findings=Hernias"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode == 2 and "Hernias" in bad.stderr


def test_cli_requires_out():
  result = subprocess.run([sys.executable, "-m", "jaxcxr.phantom", "--num_images=5"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0 and "out" in result.stderr

"""Boxes (NIH's file and the phantom's format) and localisation metrics on hand-made maps and boxes."""

import os
import types

import numpy as np
import pytest

from jaxcxr import localization as loc
from jaxcxr.data import boxes as boxes_lib
from jaxcxr.data import nih

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH_BOXES = os.path.join(ROOT, "..", "shared", "nih", "BBox_List_2017.csv.gz")


@pytest.mark.skipif(not os.path.exists(NIH_BOXES), reason="../shared/nih/BBox_List_2017.csv.gz not here")
def test_reads_nihs_box_file():
  b = boxes_lib.read_boxes(NIH_BOXES)
  assert len(b) == 984 and len(set(b.names.tolist())) == 880 and len(b.pairs()) == 984
  counts = dict(zip(*np.unique(b.findings, return_counts=True)))
  assert counts == {"Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153, "Infiltration": 123, "Mass": 85,
                    "Nodule": 79, "Pneumonia": 120, "Pneumothorax": 98}
  assert set(b.findings.tolist()) <= set(nih.CLASSES)
  # The first row: 00013118_008.png, Atelectasis, 225.08, 547.02, 86.78, 79.19 (1024 px).
  np.testing.assert_allclose(b.xywh[0], [225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661])
  assert b.names[0] == "00013118_008.png" and b.findings[0] == "Atelectasis"
  assert (b.xywh[:, :2] >= 0).all() and (b.xywh[:, 0] + b.xywh[:, 2] <= 1024.5).all()
  small = b.rescaled(256)
  np.testing.assert_allclose(small.xywh, b.xywh / 4)
  assert small.image_size == 256


def test_reads_the_phantom_format_and_refuses_bad_rows(tmp_path):
  p = tmp_path / "BBox_List_2017.csv"
  p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
               "00000001_000.png,Hernia,10,20,8,6\n00000001_000.png,Infiltrate,1,2,3,4,,\n"
               "00000002_000.png,Hernia,0.5,0.5,4,4\n\n")
  b = boxes_lib.read_boxes(str(p), image_size=64)
  assert b.findings.tolist() == ["Hernia", "Infiltration", "Hernia"] and b.image_size == 64
  assert b.rescaled(32).xywh[0].tolist() == [5, 10, 4, 3]
  assert boxes_lib.find_box_file(str(tmp_path)) == str(p)
  plain = tmp_path / "plain.csv"
  plain.write_text("Image Index,Finding Label,x,y,w,h\na.png,Nodule,1,2,3,4\n")
  assert boxes_lib.read_boxes(str(plain)).xywh.tolist() == [[1, 2, 3, 4]]
  for bad, what in (("a.png,Hernia,1,2,0,4", "positive"), ("a.png,Dragon,1,2,3,4", "unknown finding"),
                    ("a.png,Hernia,1,2,x,4", "unreadable"), ("a.png,Hernia,1", "fields")):
    f = tmp_path / "bad.csv"
    f.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + bad + "\n")
    with pytest.raises(nih.DataError, match=what) as e:
      boxes_lib.read_boxes(str(f))
    assert "row 2" in str(e.value)
  with pytest.raises(nih.DataError, match="not found"):
    boxes_lib.read_boxes(str(tmp_path / "absent.csv"))


def _peak(size, r, c):
  m = np.zeros((size, size))
  m[r, c] = 1.0
  return m


def test_pointing_game():
  box = np.array([[10, 20, 8, 6]])  # x 10..18, y 20..26.
  assert loc.pointing_hit(_peak(32, 22, 12), box) == 1.0  # Row 22 (y), column 12 (x): inside.
  assert loc.pointing_hit(_peak(32, 12, 22), box) == 0.0  # Transposed: outside.
  assert loc.pointing_hit(_peak(32, 22, 18), box) == 0.0  # Centre 18.5 is past the right edge 18.
  assert loc.pointing_hit(_peak(32, 2, 2), np.array([[10, 20, 8, 6], [0, 0, 4, 4]])) == 1.0  # Any box.


def test_mask_and_predicted_boxes():
  m = loc.box_mask((2, 3, 4, 2), (8, 8))
  assert m.sum() == 8 and m[3:5, 2:6].all()
  heat = np.zeros((16, 16))
  heat[2:5, 3:9] = 1.0
  heat[10:12, 10:11] = 0.8
  heat[14, 0] = 0.3  # Below threshold.
  pred = loc.predicted_boxes(heat, map_threshold=0.5)
  assert sorted(pred.tolist()) == [[3, 2, 6, 3], [10, 10, 1, 2]]
  assert loc.predicted_boxes(np.ones((4, 4))).tolist() == [[0, 0, 4, 4]]


def test_iobb_and_iou_by_hand():
  expert = np.array([[0, 0, 10, 10]])
  pred = np.array([[5, 5, 10, 10], [2, 2, 2, 2], [20, 20, 1, 1]])
  np.testing.assert_allclose(loc.iobb(expert, pred), [[0.25, 1.0, 0.0]])
  np.testing.assert_allclose(loc.iou(expert, pred), [[25 / 175, 4 / 100, 0.0]])


def test_score_pair_inside_outside():
  box = np.array([[8, 8, 8, 8]])
  inside = np.zeros((32, 32))
  inside[9:15, 9:15] = 1.0
  s = loc.score_pair(inside, box)
  assert s == {"pointing_game": 1.0, "iobb_0.1": 1.0, "iobb_0.25": 1.0, "iobb_0.5": 1.0,
               "mean_iou": pytest.approx(36 / 64)}
  outside = np.zeros((32, 32))
  outside[20:30, 20:30] = 1.0
  assert loc.score_pair(outside, box) == {k: 0.0 for k in loc.METRICS}
  # Half the predicted region in the box: IoBB 0.5 counts at 0.5, not above.
  half = np.zeros((32, 32))
  half[10:12, 12:20] = 1.0  # Columns 12..19; the box ends at x = 16: 4 of 8 columns inside.
  s = loc.score_pair(half, box)
  assert (s["iobb_0.25"], s["iobb_0.5"]) == (1.0, 1.0) and s["pointing_game"] == 1.0
  half[10:12, 11] = 0.0  # Columns 12..19 still, but now shift the region right by one: 3 of 8 inside.
  half[10:12, 12] = 0.0
  half[10:12, 20] = 1.0
  s = loc.score_pair(half, box)
  assert (s["iobb_0.25"], s["iobb_0.5"]) == (1.0, 0.0)


def test_controls():
  c = loc.centre_prior_map(32)
  r, col = np.unravel_index(np.argmax(c), c.shape)
  assert (r, col) in {(15, 15), (15, 16), (16, 15), (16, 16)}
  np.testing.assert_allclose(c, c.T)
  np.testing.assert_allclose(c, c[::-1, ::-1])
  maps = loc.random_maps(200, 32, seed=0)
  assert maps.shape == (200, 32, 32)
  np.testing.assert_array_equal(maps, loc.random_maps(200, 32, seed=0))
  # A random map's maximum falls in a box about as often as the box covers the image.
  box = np.array([[0, 0, 16, 32]])
  hits = np.mean([loc.pointing_hit(m, box) for m in maps])
  assert 0.38 < hits < 0.62


def test_bootstrap_mean_resamples_patients():
  values = np.array([1, 1, 1, 1, 0, 0, 1, 0], np.float64)
  patients = np.array([1, 1, 1, 1, 2, 3, 4, 5])
  mean, (lo, hi) = loc.bootstrap_mean(values, patients, num_samples=2000, seed=0)
  assert mean == pytest.approx(5 / 8) and lo < mean < hi
  _, (lo_img, hi_img) = loc.bootstrap_mean(values, np.arange(8), num_samples=2000, seed=0)
  assert hi - lo > hi_img - lo_img  # Patient 1's four images move together: a wider interval.
  assert loc.bootstrap_mean(np.ones(5), np.arange(5), num_samples=100)[1] == (1.0, 1.0)


def test_summarize_and_markdown():
  rng = np.random.default_rng(0)
  n = 60
  findings = np.array(["Hernia"] * 30 + ["Nodule"] * 30)
  patients = np.arange(n) // 2
  perfect = {k: np.ones(n) for k in loc.METRICS}
  chance = {k: (rng.random(n) < 0.3).astype(float) for k in loc.METRICS}
  table = loc.summarize({"model": perfect, "random": chance, "centre": chance}, findings=findings,
                        patients=patients, num_samples=300)
  assert list(table) == ["Hernia", "Nodule", "All"]
  assert table["Hernia"]["pairs"] == 30 and table["Hernia"]["patients"] == 15
  assert table["All"]["model"]["pointing_game"]["value"] == 1.0
  assert all(table["Hernia"]["beats_controls"].values())
  tie = loc.summarize({"model": chance, "random": chance, "centre": chance}, findings=findings,
                      patients=patients, num_samples=300)
  assert not any(tie["Hernia"]["beats_controls"].values())
  md = loc.markdown({"method": "gradcam", "findings": table, "pairs": n, "images": n})
  assert "| Hernia | 30 | 1.000 [1.00, 1.00] |" in md and "## T(IoBB)>=0.25" in md and "| yes |" in md


class _Split:

  def __init__(self, names, patients, images):
    self.meta = types.SimpleNamespace(names=np.asarray(names), patients=np.asarray(patients))
    self.images = images
    self.rows = np.arange(len(names))

  def __len__(self):
    return len(self.meta.names)


def test_match_pairs():
  b = boxes_lib.Boxes(np.array(["a.png", "b.png", "a.png", "z.png"]), np.array(["Mass", "Nodule", "Nodule", "Mass"]),
                      np.arange(16, dtype=float).reshape(4, 4) + 1, 32.0)
  pairs, skipped = loc.match_pairs(b, _Split(["b.png", "a.png"], [7, 8], None))
  assert [(r, f) for r, f, _ in pairs] == [(1, "Mass"), (0, "Nodule"), (1, "Nodule")]
  assert skipped == {"image_not_in_split": 1}

"""MLSMOTE: minority labels, where synthetic points lie, the ranking rule, the smote.resample wiring, and
the :mlsmote arm end to end with nothing from validation or test reaching it."""

import os

import numpy as np
import pytest

from jaxcxr import embeddings as emb_lib
from jaxcxr import experiment
from jaxcxr import head_stages
from jaxcxr import mlsmote
from jaxcxr import model_context
from jaxcxr import resampling as smote
from tests.helpers import tiny_config


def _toy(seed=0, n=400, dim=6, prevalence=(0.4, 0.25, 0.05, 0.03, 0.1, 0.0)):
  """Correlated labels: class 3 rows mostly carry class 2 too, so label sets differ between neighbours."""
  rng = np.random.default_rng(seed)
  labels = np.stack([rng.random(n) < p for p in prevalence], 1)
  labels[:, 2] |= labels[:, 3] & (rng.random(n) < 0.7)
  labels = labels.astype(np.uint8)
  x = (rng.normal(size=(n, dim)) + labels[:, :dim] * 1.5).astype(np.float32)
  return x, labels


def _knn(points, k):
  d = ((points[:, None].astype(np.float64) - points[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  return np.argsort(d, 1)[:, :k]


def test_minority_labels_by_hand():
  # Counts [8, 4, 2, 1, 0]: IRLbl [1, 2, 4, 8] over the labels present, mean 3.75 -> labels 2 and 3.
  labels = np.zeros((8, 5), np.uint8)
  for c, n in enumerate([8, 4, 2, 1]):
    labels[:n, c] = 1
  irlbl, mean_ir = mlsmote.imbalance_ratios(labels)
  np.testing.assert_allclose(irlbl[:4], [1, 2, 4, 8])
  assert np.isinf(irlbl[4]) and mean_ir == pytest.approx(3.75)
  assert mlsmote.minority_labels(labels).tolist() == [2, 3]


def test_synthetic_points_lie_on_segments_to_a_neighbour_sharing_the_minority_label():
  x, labels = _toy()
  k = 4
  syn = mlsmote.generate(x, labels, k_neighbors=k, seed=0)
  minority = mlsmote.minority_labels(labels)
  assert set(np.unique(syn.origin_class)) == set(minority) and len(minority) >= 2
  assert len(syn.features) == sum(labels[:, c].sum() for c in minority)  # One per row per minority label.
  for c in minority:
    rows = np.flatnonzero(syn.origin_class == c)
    bag = np.flatnonzero(labels[:, c])
    assert sorted(syn.sample[rows]) == sorted(bag)  # Every row carrying c seeds one point.
    nbrs = {i: set(bag[n]) for i, n in zip(bag, _knn(x[bag], k))}
    for s in rows:
      i, j = syn.sample[s], syn.neighbour[s]
      assert labels[i, c] == 1 and labels[j, c] == 1 and j != i
      assert j in nbrs[i], "the neighbour is among i's k nearest rows carrying the label"
      # s = x_i + t (x_j - x_i) with t in [0, 1].
      ab = x[j] - x[i]
      t = float((syn.features[s] - x[i]) @ ab / (ab @ ab))
      assert -1e-6 <= t <= 1 + 1e-6
      np.testing.assert_allclose(syn.features[s], x[i] + t * ab, atol=1e-5)
  assert syn.features.dtype == np.float32 and syn.labels.dtype == np.uint8


def test_label_sets_follow_the_ranking_rule():
  x, labels = _toy(seed=1)
  k = 4
  syn = mlsmote.generate(x, labels, k_neighbors=k, seed=3)
  changed = 0
  for s in range(len(syn.features)):
    c, i = syn.origin_class[s], syn.sample[s]
    bag = np.flatnonzero(labels[:, c])
    near = bag[_knn(x[bag], k)[np.flatnonzero(bag == i)[0]]]
    votes = labels[i].astype(int) + labels[near].sum(0)
    expected = (votes > (k + 1) / 2).astype(np.uint8)  # More than half of the k + 1 rows.
    np.testing.assert_array_equal(syn.labels[s], expected)
    assert syn.labels[s, c] == 1
    changed += int(np.any(expected != labels[i]))
  assert changed > 0, "the rule is not simply copying the sample's own labels on this data"


def test_ties_are_not_set_and_few_rows_shrink_k():
  # Label 1 is carried by 2 rows: k = 1; label 2 by 1 row: duplicated. Label 0 is the majority.
  x = np.arange(16, dtype=np.float32).reshape(8, 2)
  labels = np.zeros((8, 4), np.uint8)
  labels[:, 0] = 1
  labels[[0, 1], 1] = 1
  labels[5, 2] = 1
  labels[0, 3] = labels[1, 3] = labels[2, 3] = labels[3, 3] = 1
  syn = mlsmote.generate(x, labels, k_neighbors=3, seed=0)
  assert mlsmote.minority_labels(labels).tolist() == [1, 2]
  one = np.flatnonzero(syn.origin_class == 1)
  assert sorted(syn.sample[one]) == [0, 1] and sorted(syn.neighbour[one]) == [0, 1]
  assert syn.log[1]["k_neighbors"] == 1 and "too few" in syn.log[1]["note"]
  two = np.flatnonzero(syn.origin_class == 2)
  np.testing.assert_array_equal(syn.features[two], x[[5]])
  np.testing.assert_array_equal(syn.labels[two], labels[[5]])
  assert "duplicated" in syn.log[2]["note"]
  # Rows 0 and 1 with k=1: a label carried by both is set; by one of the two (a tie) is not.
  labels_tie = labels.copy()
  labels_tie[0, 3] = 0
  syn = mlsmote.generate(x, labels_tie, k_neighbors=1, seed=0)
  one = np.flatnonzero(syn.origin_class == 1)
  assert np.all(syn.labels[one, 3] == 0) and np.all(syn.labels[one, 0] == 1)


def test_resample_wiring_real_rows_first():
  x, labels = _toy(seed=2)
  res = smote.resample(x, labels, method="mlsmote", k_neighbors=3, ratio=0.1, seed=5,
                       classes=tuple("abcdef"))
  syn = mlsmote.generate(x, labels, k_neighbors=3, seed=5)
  n = len(x)
  np.testing.assert_array_equal(res.features[:n], x)
  np.testing.assert_array_equal(res.labels[:n], labels)
  np.testing.assert_array_equal(res.features[n:], syn.features)
  np.testing.assert_array_equal(res.labels[n:], syn.labels)
  assert not res.is_synthetic[:n].any() and res.is_synthetic[n:].all()
  assert np.all(res.origin_class[:n] == -1) and np.array_equal(res.origin_class[n:], syn.origin_class)
  assert [e["class"] for e in res.log] == list("abcdef")
  assert sum(e["synthetic"] for e in res.log) == len(syn.features) > 0
  assert res.log[5]["note"] == "no positives" and not res.log[0]["minority"]


def test_neighbour_search_in_blocks_matches_one_block():
  x, _ = _toy(seed=4, n=300)
  np.testing.assert_array_equal(mlsmote.neighbours_within(x, k=5, chunk=7),
                                mlsmote.neighbours_within(x, k=5, chunk=10_000))
  np.testing.assert_array_equal(np.sort(mlsmote.neighbours_within(x, k=5), 1), np.sort(_knn(x, 5), 1))


@pytest.fixture(scope="module")
def mlsmote_run(tiny_data_dir, tmp_path_factory):
  config = tiny_config(tiny_data_dir, arm="mlsmote")
  config.smote.steps = 50
  config.smote.batch_size = 64
  workdir = str(tmp_path_factory.mktemp("mlsmote_run"))
  report = experiment.run(config, workdir)
  return config, workdir, report


def test_arm_runs_end_to_end(mlsmote_run):
  config, workdir, report = mlsmote_run
  assert config.smote.method == "mlsmote" and report["method"] == "mlsmote"
  assert report["synthetic_rows"] > 0
  assert any(e["minority"] for e in report["resampling"])
  assert os.path.getsize(os.path.join(workdir, "smote", "report.md")) > 0


def test_nothing_from_val_or_test_reaches_mlsmote(mlsmote_run, monkeypatch):
  config, workdir, _ = mlsmote_run
  seen = []
  real = mlsmote.generate

  def spy(features, labels, **kwargs):
    seen.append(np.array(features))
    return real(features, labels, **kwargs)

  monkeypatch.setattr(mlsmote, "generate", spy)
  embedded, _ = emb_lib.load(os.path.join(workdir, "embeddings"))
  head_stages.run_smote(model_context.ModelContext.from_workdir(workdir, config), progress=False, verbose=False)
  assert len(seen) == 1
  np.testing.assert_array_equal(seen[0], embedded["train"].features)
  held_out = {row.tobytes() for name in ("val", "test") for row in embedded[name].features}
  assert not any(row.tobytes() in held_out for row in seen[0])

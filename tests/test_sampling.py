"""Oversampling plans and the Grain training stream: shares, caps, formula, determinism, shards, restore."""

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxcxr.data import datasets
from jaxcxr.data import nih
from jaxcxr.data import pipeline
from jaxcxr.data import sampling
from tests.helpers import tiny_config

HERNIA = nih.CLASSES.index("Hernia")


def _sampling(**fields):
  s = ml_collections.ConfigDict({"name": "none", "threshold": 0.05, "ratio": 0.5, "cap": 50,
                                 "undersample_no_finding": 1.0})
  s.update(fields)
  return s


@pytest.fixture(scope="module")
def train_split(tiny_data_dir):
  return datasets.load_splits(tiny_config(tiny_data_dir))["train"]


def _stream(split, n_batches, batch=100, **kw):
  it = pipeline.train_iterator(split, global_batch=batch, seed=0, with_index=True, **kw)
  return np.concatenate([next(it)["index"] for _ in range(n_batches)])


def test_target_ratio_share_and_cap(train_split):
  labels = train_split.meta.labels
  pos = int(labels[:, HERNIA].sum())
  cap = 2  # The tiny set's train split holds 43 Hernia images (tests/conftest.py), 220 without.
  assert 2 * cap * pos < (labels[:, HERNIA] == 0).sum(), "the cap must bind for this test to mean something"
  s = _sampling(name="target_ratio", ratio=0.5, cap=cap)
  idx = _stream(train_split, 110, sampling=s, target="Hernia")  # 11,000 images.
  share = labels[idx, HERNIA].mean()
  assert abs(share - 0.5) <= 0.02, share
  length = sampling.make_plan(labels, s, target="Hernia", seed=0).epoch_length
  for e in range(len(idx) // length):
    assert np.bincount(idx[e * length:(e + 1) * length]).max() <= cap


def test_none_matches_prevalence(train_split):
  labels = train_split.meta.labels
  idx = _stream(train_split, 100, sampling=_sampling(name="none"))
  prevalence, share = labels.mean(0), labels[idx].mean(0)
  tol = 4 * np.sqrt(prevalence * (1 - prevalence) / len(idx)) + 1e-3
  assert np.all(np.abs(share - prevalence) <= tol), (share, prevalence)
  # Whole epochs: every image exactly once per epoch.
  n = len(labels)
  np.testing.assert_array_equal(np.bincount(idx[:n], minlength=n), np.ones(n))


def test_undersample_no_finding_keeps_that_fraction():
  rng = np.random.default_rng(0)
  labels = (rng.random((2000, 14)) < 0.03).astype(np.float32)
  no_finding = labels.sum(1) == 0
  plan = sampling.make_plan(labels, _sampling(undersample_no_finding=0.25), target="Hernia", seed=0)
  e = plan.epoch(0)
  assert (~no_finding[e]).sum() == (~no_finding).sum()  # Every image with a finding stays, once.
  assert no_finding[e].sum() == int(0.25 * no_finding.sum())  # The whole part of the expected count.
  assert set(e[no_finding[e]]) != set(plan.epoch(1)[no_finding[plan.epoch(1)]])  # A fresh draw per epoch.


def test_repeat_factor_formula_by_hand():
  # 10 images; class 0 in 1 image (f = 0.1), class 1 in 5 (f = 0.5); image 0 has both, image 9 neither.
  labels = np.zeros((10, 14))
  labels[0, 0] = 1
  labels[0:5, 1] = 1
  # t = 0.9: r_0 = sqrt(0.9 / 0.1) = 3, r_1 = sqrt(0.9 / 0.5) = sqrt(1.8); image r = max over its labels.
  expected = np.array([3.0] + [np.sqrt(1.8)] * 4 + [1.0] * 5)
  np.testing.assert_allclose(sampling.repeat_factors(labels, 0.9), expected)
  # t = 0.2: r_1 = max(1, sqrt(0.4)) = 1.
  np.testing.assert_allclose(sampling.repeat_factors(labels, 0.2), [np.sqrt(2.0)] + [1.0] * 9)
  # The same pattern 100 times over (frequencies unchanged): counts are the factors, rounded at random
  # to a neighbouring integer, with a fixed epoch length.
  big = np.tile(labels, (100, 1))
  plan = sampling.make_plan(big, _sampling(name="repeat_factor", threshold=0.9), target="Hernia", seed=0)
  counts = np.stack([np.bincount(plan.epoch(e), minlength=1000) for e in range(20)]).reshape(20, 100, 10)
  assert (counts[..., 0] == 3).all() and (counts[..., 5:] == 1).all()
  assert set(np.unique(counts[..., 1:5])) == {1, 2}
  np.testing.assert_allclose(counts[..., 1:5].mean(), np.sqrt(1.8), atol=0.01)
  assert plan.epoch_length == int(100 * (3 + 4 * np.sqrt(1.8) + 5))


def test_class_balanced_evens_out_classes():
  rng = np.random.default_rng(0)
  labels = np.zeros((3000, 14))
  labels[:, 0] = rng.random(3000) < 0.3
  labels[:, HERNIA] = rng.random(3000) < 0.01
  plan = sampling.make_plan(labels, _sampling(name="class_balanced", cap=100), target="Hernia", seed=0)
  e = plan.epoch(0)
  assert len(e) == 3000 and np.bincount(e).max() <= 100
  share = labels[e].mean(0)
  # Three classes (0, Hernia, No Finding) each drawn about a third of the time; Hernia also rides along
  # with the 1% of class-0 draws that carry it.
  assert abs(share[HERNIA] - 1 / 3) < 0.03, share[HERNIA]
  assert abs(share[0] - (1 / 3 + (labels[:, 0] * labels[:, HERNIA]).sum() / labels[:, HERNIA].sum() / 3)) < 0.03
  assert abs((labels[e].sum(1) == 0).mean() - 1 / 3) < 0.03


def test_deterministic_per_seed_and_fresh_per_epoch():
  rng = np.random.default_rng(0)
  labels = (rng.random((500, 14)) < 0.05).astype(np.float32)
  s = _sampling(name="target_ratio", ratio=0.3, cap=20)
  a = sampling.make_plan(labels, s, target="Hernia", seed=3)
  b = sampling.make_plan(labels, s, target="Hernia", seed=3)
  np.testing.assert_array_equal(a.epoch(0), b.epoch(0))
  np.testing.assert_array_equal(a.epoch(5), b.epoch(5))
  assert not np.array_equal(a.epoch(0), a.epoch(1))
  assert not np.array_equal(a.epoch(0), sampling.make_plan(labels, s, target="Hernia", seed=4).epoch(0))


@pytest.mark.parametrize("name", ["none", "target_ratio"])
def test_process_shards_are_disjoint_and_cover_the_epoch(train_split, name):
  s = _sampling(name=name, ratio=0.5, cap=8)
  if name == "none":
    length = len(train_split)
  else:
    length = sampling.make_plan(train_split.meta.labels, s, target="Hernia", seed=0).epoch_length
  per = length // 2 // 10
  shards = [_stream(train_split, per, batch=20, sampling=s, target="Hernia", process_index=p, process_count=2)
            for p in range(2)]
  if name == "none":
    assert not set(shards[0]) & set(shards[1])
  else:  # Repeats are expected; the two shards together are exactly the epoch's draws, each taken once.
    epoch = sampling.make_plan(train_split.meta.labels, s, target="Hernia", seed=0).epoch(0)
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.sort(epoch[:2 * len(shards[0])]))
    np.testing.assert_array_equal(shards[0], epoch[0:2 * len(shards[0]):2])


def test_restored_iterator_continues_the_stream(train_split, tmp_path):
  s = _sampling(name="target_ratio", ratio=0.5, cap=8)
  make = lambda: pipeline.train_iterator(train_split, global_batch=64, seed=0, sampling=s, target="Hernia",
                                         with_index=True)
  full = make()
  uninterrupted = [next(full)["index"] for _ in range(12)]
  it = make()
  for _ in range(7):
    next(it)
  mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mgr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mgr.wait_until_finished()
  resumed = make()
  mgr.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  for want in uninterrupted[7:]:
    np.testing.assert_array_equal(next(resumed)["index"], want)
  mgr.close()


def test_bad_fields_are_named():
  labels = np.zeros((10, 14))
  with pytest.raises(ValueError, match="data.sampling.name"):
    sampling.make_plan(labels, _sampling(name="smote"), target="Hernia", seed=0)
  with pytest.raises(ValueError, match="no Hernia images"):
    sampling.make_plan(labels, _sampling(name="target_ratio"), target="Hernia", seed=0)


def test_source_pickles_its_memmap_as_a_file_not_a_copy(train_split):
  """Grain's worker processes receive the source pickled: the images must not travel with it."""
  import pickle  # pylint: disable=g-import-not-at-top
  assert isinstance(train_split.images, np.memmap)
  source = pipeline.BatchSource(train_split, pipeline._Epochs(len(train_split), 0), batch_size=16,  # pylint: disable=protected-access
                                with_index=True)
  data = pickle.dumps(source)
  assert len(data) < train_split.images.nbytes / 4, (len(data), train_split.images.nbytes)
  copy = pickle.loads(data)
  for b in (0, 7, 100):
    want, got = source[b], copy[b]
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])

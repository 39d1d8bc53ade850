"""Feature-space SMOTE: where synthetic points lie, what reaches the resampler, fallbacks, the :smote arm
end to end, and the written-back model scoring images as the head scored embeddings."""

import json
import os

import jax
import numpy as np
import pytest

from jaxcxr import embeddings as emb_lib
from jaxcxr import evaluation as evaluate
from jaxcxr import experiment
from jaxcxr import head_stages
from jaxcxr import heads
from jaxcxr import model_context
from jaxcxr import resampling as smote
from jaxcxr.data import datasets
from jaxcxr.data import nih
from tests.helpers import assert_written_back_head_matches
from tests.helpers import tiny_config

CLASSES = ("a", "b", "c")


def _toy(seed=0, n=300, dim=5, prevalence=(0.08, 0.04, 0.3)):
  rng = np.random.default_rng(seed)
  labels = np.stack([rng.random(n) < p for p in prevalence], 1).astype(np.uint8)
  x = (rng.normal(size=(n, dim)) + labels[:, :1] * 0.8 - labels[:, 1:2] * 0.8).astype(np.float32)
  return x, labels


def _knn(points, k):
  d = ((points[:, None] - points[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  return np.argsort(d, 1)[:, :k]


@pytest.mark.parametrize("method", ["smote", "borderline1", "adasyn"])
def test_synthetic_points_lie_on_segments_between_minority_neighbours(method):
  x, labels = _toy()
  k = 3
  res = smote.resample(x, labels, method=method, k_neighbors=k, ratio=0.25, seed=0, classes=CLASSES)
  n = len(x)
  assert np.array_equal(res.features[:n], x) and np.array_equal(res.labels[:n], labels)
  checked = 0
  for c in range(len(CLASSES)):
    syn = np.flatnonzero(res.origin_class == c)
    if not syn.size:
      continue
    pos = x[labels[:, c] == 1]
    nbrs = _knn(pos, k)
    for s in res.features[syn]:
      # s = a + t (b - a), t in [0, 1], for a real positive a and b among a's k nearest positives.
      a = pos[:, None, :]
      b = pos[nbrs]
      ab = b - a
      t = ((s - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)
      resid = np.linalg.norm(a + np.clip(t, 0, 1)[..., None] * ab - s, axis=-1)
      assert resid.min() < 1e-4, (method, c, resid.min())
      checked += 1
    assert np.all(res.labels[syn, c] == 1)
    # The other labels are those of the nearest real positive.
    real_pos = np.flatnonzero(labels[:, c] == 1)
    d = ((res.features[syn][:, None] - x[real_pos][None]) ** 2).sum(-1)
    assert np.array_equal(res.labels[syn], labels[real_pos[d.argmin(1)]] | np.eye(3, dtype=np.uint8)[c])
  assert checked > 20


@pytest.mark.parametrize("method", ["smote", "random"])
def test_few_negatives_give_the_points_of_the_full_rows(method, monkeypatch):
  """For MINORITY_ONLY methods imbalanced-learn gets the positives and a few negatives: same number of
  points, the same points (on segments between real positive neighbours for smote) as with all rows."""
  x, labels = _toy(n=600)
  k = 3
  seen = []
  real = smote.fit_resample

  def spy(method, features, y, **kwargs):
    seen.append((np.array(features), np.array(y)))
    return real(method, features, y, **kwargs)

  monkeypatch.setattr(smote, "fit_resample", spy)
  full = smote.resample(x, labels, method=method, k_neighbors=k, ratio=0.25, seed=0, classes=CLASSES,
                        negatives_kept=len(x))
  assert all(len(f) == len(x) for f, _ in seen)
  seen.clear()
  few = smote.resample(x, labels, method=method, k_neighbors=k, ratio=0.25, seed=0, classes=CLASSES,
                       negatives_kept=7)
  assert len(seen) == 2  # Labels a and b; c is above the ratio.
  x_rows = {row.tobytes(): i for i, row in enumerate(x)}
  for (f, y), c in zip(seen, (0, 1)):
    assert len(f) == labels[:, c].sum() + 7 and (y == 0).sum() == 7
    rows = [x_rows[row.tobytes()] for row in f]  # Only training rows, each once, all positives of c.
    assert len(set(rows)) == len(rows) and np.array_equal(y, labels[rows, c])
    assert set(np.flatnonzero(labels[:, c])) <= set(rows)
  for c in range(len(CLASSES)):
    assert few.log[c]["synthetic"] == full.log[c]["synthetic"], c
  assert few.log[0]["synthetic"] > 10 and few.log[1]["synthetic"] > 10
  for field in ("features", "labels", "is_synthetic", "origin_class"):
    assert np.array_equal(getattr(few, field), getattr(full, field)), field
  if method == "smote":  # The points are new (not copies) and lie on segments between positive neighbours.
    for c in range(2):
      pos = x[labels[:, c] == 1]
      syn = few.features[few.origin_class == c]
      assert not any(row.tobytes() in x_rows for row in syn)
      a, b = pos[:, None, :], pos[_knn(pos, k)]
      for s in syn:
        ab = b - a
        t = np.clip(((s - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
        assert np.linalg.norm(a + t[..., None] * ab - s, axis=-1).min() < 1e-4


def test_head_training_is_deterministic_for_a_seed():
  x, labels = _toy(n=400)
  config = tiny_config("/unused", arm="smote")
  config.smote.steps, config.smote.batch_size = 30, 32

  def fit(seed):
    return heads.train_head(x, labels.astype(np.float32), head_config=config.smote, loss_config=config.loss,
                            seed=seed, progress=False, chunk=7)

  (p1, m1, s1, l1), (p2, _, _, l2), (p3, _, _, _) = fit(0), fit(0), fit(1)
  assert l1 == l2 and np.isfinite(l1)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  assert not np.array_equal(p1["kernel"], p3["kernel"])  # Another seed draws other batches.
  assert np.allclose(m1, x.mean(0), atol=1e-5) and np.allclose(s1, x.std(0), atol=1e-4)


def test_random_noise_is_not_on_segments():
  """The segment check above can fail: points off the segments are caught."""
  x, labels = _toy()
  pos = x[labels[:, 0] == 1]
  nbrs = _knn(pos, 3)
  s = pos[0] + np.random.default_rng(1).normal(size=x.shape[1]).astype(np.float32)
  ab = pos[nbrs] - pos[:, None, :]
  t = ((s - pos[:, None, :]) * ab).sum(-1) / (ab * ab).sum(-1)
  assert np.linalg.norm(pos[:, None, :] + np.clip(t, 0, 1)[..., None] * ab - s, axis=-1).min() > 1e-2


def test_ratio_is_reached_per_label_and_labels_above_it_are_left_alone():
  x, labels = _toy()
  ratio = 0.25
  res = smote.resample(x, labels, method="smote", k_neighbors=3, ratio=ratio, seed=0, classes=CLASSES)
  for c in range(2):
    rows = (res.origin_class == -1) | (res.origin_class == c)
    pos = res.labels[rows, c].sum()
    neg = rows.sum() - pos
    assert abs(pos / neg - ratio) <= 1.0 / neg, c
  assert res.log[2]["synthetic"] == 0 and "already" in res.log[2]["note"]  # 30% positives: above 0.25.


def test_fallback_when_too_few_positives():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 4)).astype(np.float32)
  labels = np.zeros((200, 3), np.uint8)
  labels[:3, 0] = 1  # 3 positives < k + 1: k becomes 2.
  labels[3, 1] = 1  # 1 positive: duplication.
  res = smote.resample(x, labels, method="smote", k_neighbors=5, ratio=0.1, seed=0, classes=CLASSES)
  a, b, c = res.log
  assert a["k_neighbors"] == 2 and a["method"] == "smote" and "too few" in a["note"] and a["synthetic"] > 0
  assert b["method"] == "random" and "duplication" in b["note"] and b["synthetic"] > 0
  assert np.all(res.features[res.origin_class == 1] == x[3])
  assert c["synthetic"] == 0 and "no positives" in c["note"]
  assert res.labels[res.origin_class == 0, 0].all()


def test_method_none_changes_nothing():
  x, labels = _toy()
  res = smote.resample(x, labels, method="none", k_neighbors=3, ratio=0.5, seed=0, classes=CLASSES)
  assert np.array_equal(res.features, x) and not res.is_synthetic.any()


def test_bad_smote_config_fails_before_training(tiny_data_dir):
  config = tiny_config(tiny_data_dir, arm="smote")
  config.smote.method = "smoat"
  with pytest.raises(head_stages.SmoteError, match="smote.method"):
    experiment.run(config, "/nonexistent/never_written")


# ----------------------------------------------------------------------------
# The :smote arm end to end on tiny data.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smote_run(tiny_data_dir, tmp_path_factory):
  config = tiny_config(tiny_data_dir, arm="smote")
  config.smote.steps = 150
  config.smote.batch_size = 64
  config.smote.learning_rate = 1e-2
  workdir = str(tmp_path_factory.mktemp("smote_run"))
  report = experiment.run(config, workdir)
  return config, workdir, report


def test_arm_writes_the_smote_report_beside_the_backbones(smote_run):
  config, workdir, report = smote_run
  assert config.smote.method == "smote" and config.loss.name == "bce"
  with open(os.path.join(workdir, "smote", "report.json")) as f:
    saved = json.load(f)
  assert saved["stage"] == "smote" and saved["split"] == "official/test"
  assert saved["synthetic_rows"] > 0 and saved["synthetic_rows"] == report["synthetic_rows"]
  for f in ("report.md", "roc.png", "pr.png"):
    assert os.path.getsize(os.path.join(workdir, "smote", f)) > 0
  assert "SMOTE head against the backbone" in open(os.path.join(workdir, "smote", "report.md")).read()
  assert "Hernia (backbone)" in head_stages.format_table(saved)
  # The backbone's own metrics from the embeddings agree with the trainer's image-level report.
  with open(os.path.join(workdir, "report", "report.json")) as f:
    trained = json.load(f)
  assert saved["backbone"]["checkpoint_step"] == trained["checkpoint_step"] == saved["checkpoint_step"]
  for name in nih.CLASSES:
    ours, theirs = saved["backbone"]["classes"][name], trained["classes"][name]
    for key in ("auroc", "auprc"):
      assert (ours[key] is None) == (theirs[key] is None), (name, key)
      if ours[key] is not None:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), (name, key)
  # Export format: row counts and ids in split order, no views for this arm.
  embedded, meta = emb_lib.load(os.path.join(workdir, "embeddings"))
  splits = datasets.load_splits(config)
  for name in emb_lib.SPLITS:
    e = embedded[name]
    assert len(e) == meta["rows"][name] == len(splits[name])
    assert list(e.image_ids) == list(splits[name].meta.names)
    assert np.array_equal(e.patient_ids, splits[name].meta.patients)
    assert not e.is_view.any()


def test_write_back_scores_images_like_the_head_scored_embeddings(smote_run):
  config, workdir, report = smote_run
  combined = evaluate.evaluate_checkpoint(config, os.path.join(workdir, "smote"), checkpoint="best",
                                          split="test", bootstrap_samples=0, progress=False, verbose=False)
  assert_written_back_head_matches(combined, report)


def test_nothing_from_val_or_test_reaches_the_resampler(smote_run, monkeypatch):
  config, workdir, _ = smote_run
  seen = []
  real = smote.make_resampler

  def spy(method, **kwargs):
    resampler = real(method, **kwargs)
    fit = resampler.fit_resample

    def recording_fit(x, y):
      seen.append(np.array(x))
      return fit(x, y)
    resampler.fit_resample = recording_fit
    return resampler

  monkeypatch.setattr(smote, "make_resampler", spy)
  embedded, _ = emb_lib.load(os.path.join(workdir, "embeddings"))
  head_stages.run_smote(model_context.ModelContext.from_workdir(workdir, config), progress=False, verbose=False)
  assert seen
  held_out = {row.tobytes() for name in ("val", "test") for row in embedded[name].features}
  for x in seen:
    assert np.array_equal(x, embedded["train"].features)
    assert not any(row.tobytes() in held_out for row in x)

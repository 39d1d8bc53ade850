"""Embedding export: rows and ids per split, augmented target views (train only), files read without pickle."""

import sys
import types

import jax
import numpy as np
import pytest

from jaxcxr import embeddings as emb_lib
from jaxcxr import train
from tests.helpers import tiny_config


def _stand_in_augment(key, images, labels):
  """A deterministic stand-in for jaxcxr.data.augment: inverts the image, brighter for later views."""
  del labels
  shift = jax.random.uniform(key, (), minval=0.0, maxval=20.0)
  return jax.numpy.clip(255.0 - images.astype(jax.numpy.float32) + shift, 0.0, 255.0)


@pytest.fixture
def fake_augment(monkeypatch):
  """Installs a stand-in jaxcxr.data.augment whose make_augment_fn returns `_stand_in_augment`."""
  module = types.ModuleType("jaxcxr.data.augment")
  module.make_augment_fn = lambda config: _stand_in_augment
  monkeypatch.setitem(sys.modules, "jaxcxr.data.augment", module)
  import jaxcxr.data  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jaxcxr.data, "augment", module, raising=False)
  return module


@pytest.fixture(scope="module")
def trainer(tiny_data_dir, tmp_path_factory):
  """A Trainer of the tiny config with its freshly initialised state (no training needed here)."""
  return train.Trainer(tiny_config(tiny_data_dir, arm="smote"), str(tmp_path_factory.mktemp("embed")))


def test_views_are_extra_training_rows_only(trainer, fake_augment, tmp_path):
  del fake_augment
  views = 2
  out = emb_lib.compute(trainer, trainer.state, views=views, seed=3, progress=False)
  tr = trainer.splits["train"]
  pos = np.flatnonzero(tr.meta.labels[:, trainer.target] > 0)
  assert pos.size > 0
  e = out["train"]
  n = len(tr)
  assert len(e) == n + views * pos.size
  assert not e.is_view[:n].any() and e.is_view[n:].all()
  assert list(e.image_ids[:n]) == list(tr.meta.names)
  assert list(e.image_ids[n:n + pos.size]) == [f"{m}#view0" for m in tr.meta.names[pos]]
  assert list(e.image_ids[n + pos.size:]) == [f"{m}#view1" for m in tr.meta.names[pos]]
  assert np.array_equal(e.labels[n:], np.concatenate([tr.meta.labels[pos]] * views))
  assert np.array_equal(e.patient_ids[n:], np.concatenate([tr.meta.patients[pos]] * views))
  for name in ("val", "test"):
    assert len(out[name]) == len(trainer.splits[name]) and not out[name].is_view.any()
    assert list(out[name].image_ids) == list(trainer.splits[name].meta.names)
  # A view's features are the model's features of the stand-in's augmentation of the source image.
  variables = {"params": trainer.state.params, "batch_stats": trainer.state.batch_stats}
  image = np.asarray(tr.images[tr.rows[pos[0]]])[None, ..., None]
  for k in range(views):
    key = jax.random.fold_in(jax.random.key(3), k)
    want = trainer.model.apply(variables, train.normalize(_stand_in_augment(key, image, None)), train=False,
                               features=True)
    np.testing.assert_allclose(e.features[n + k * pos.size], np.asarray(want)[0], rtol=1e-4, atol=1e-5)
  assert not np.allclose(e.features[n], e.features[pos[0]])  # The view differs from its source image.

  # The files load without pickle and give back every field.
  emb_lib.save(out, str(tmp_path), meta={"views": views})
  loaded, meta = emb_lib.load(str(tmp_path))
  assert meta["rows"] == {name: len(out[name]) for name in emb_lib.SPLITS}
  for name in emb_lib.SPLITS:
    with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as z:
      assert sorted(z.files) == sorted(emb_lib.FIELDS)
      assert z["features"].dtype == np.float32 and z["labels"].dtype == np.uint8
      assert z["patient_ids"].dtype == np.int64 and z["image_ids"].dtype.kind == "U"
    for field in emb_lib.FIELDS:
      assert np.array_equal(getattr(loaded[name], field), getattr(out[name], field)), (name, field)


def test_plain_export_matches_the_models_predictions(trainer):
  out = emb_lib.compute(trainer, trainer.state, views=0, progress=False)
  probs = trainer.predict(trainer.state, trainer.splits["val"])
  np.testing.assert_allclose(out["val"].backbone_probs, probs, rtol=1e-5, atol=1e-6)
  assert out["train"].features.shape[0] == len(trainer.splits["train"])


def test_views_use_the_real_augmentation_even_when_training_does_not_augment(trainer):
  assert not trainer.config.data.augment.enabled  # The smote arm trains its backbone on plain images.
  out = emb_lib.compute(trainer, trainer.state, views=1, seed=0, progress=False)
  tr = trainer.splits["train"]
  pos = np.flatnonzero(tr.meta.labels[:, trainer.target] > 0)
  e = out["train"]
  assert e.is_view.sum() == pos.size
  # Target images are augmented with probability 0.9 at full strength: most views moved off their source.
  moved = ~np.all(np.isclose(e.features[len(tr):], e.features[pos], rtol=1e-4, atol=1e-5), axis=1)
  assert moved.mean() > 0.5


def test_missing_embeddings_say_how_to_make_them(tmp_path):
  with pytest.raises(emb_lib.EmbeddingsError, match="jaxcxr.export_embeddings"):
    emb_lib.load(str(tmp_path))

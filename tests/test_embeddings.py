"""Embedding export: rows and ids per split, augmented target views (train only), files read without pickle."""

import jax
import numpy as np
import pytest

from jaxcxr import embeddings as emb_lib
from jaxcxr import model_context
from jaxcxr import train
from jaxcxr.data import datasets
from jaxcxr.data import nih
from tests.helpers import tiny_config


def _stand_in_augment(key, images, labels):
  """A deterministic stand-in for jaxcxr.data.augment: inverts the image and brightens it by an amount drawn
  from each image's key (one key per image, or one for all)."""
  del labels
  keys = key if jax.numpy.ndim(key) else key[None]
  shift = jax.vmap(lambda k: jax.random.uniform(k, (), minval=0.0, maxval=20.0))(keys)
  shift = shift.reshape(-1, *([1] * (images.ndim - 1)))
  return jax.numpy.clip(255.0 - images.astype(jax.numpy.float32) + shift, 0.0, 255.0)


@pytest.fixture
def fake_augment(monkeypatch):
  """Makes jaxcxr.data.augment's make_augment_fn return `_stand_in_augment` for the embedding export."""
  monkeypatch.setattr(emb_lib.augment, "make_augment_fn", lambda config: _stand_in_augment)


@pytest.fixture(scope="module")
def model(tiny_data_dir):
  """(model context, freshly initialised variables) of the tiny config (no training needed here)."""
  config = tiny_config(tiny_data_dir, arm="smote")
  splits = datasets.load_splits(config)
  labels = splits["train"].meta.labels
  trainer = train.Trainer(config, num_pos=labels.sum(0), num_total=len(labels), splits=splits)
  return trainer.ctx, train.variables_of(trainer.state)


TARGET = nih.CLASSES.index("Hernia")


def test_views_are_extra_training_rows_only(model, fake_augment, tmp_path):
  del fake_augment
  ctx, variables = model
  views = 2
  out = emb_lib.compute(ctx, variables, views=views, seed=3, progress=False)
  tr = ctx.splits["train"]
  pos = np.flatnonzero(tr.meta.labels[:, TARGET] > 0)
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
    assert len(out[name]) == len(ctx.splits[name]) and not out[name].is_view.any()
    assert list(out[name].image_ids) == list(ctx.splits[name].meta.names)
  # A view's features are the model's features of the stand-in's augmentation of the source image, with
  # the key of that (image, view): the seed folded with the view, then with the image's row.
  image = np.asarray(tr.images[tr.rows[pos[0]]])[None, ..., None]
  for k in range(views):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), k), pos[0])
    _, aux = ctx.model.apply(variables, model_context.normalize(_stand_in_augment(key, image, None)),
                             train=False)
    np.testing.assert_allclose(e.features[n + k * pos.size], np.asarray(aux["pre_logits"])[0], rtol=1e-4,
                               atol=1e-5)
  # Two images of one view draw different augmentations (one key per image, not per batch offset).
  if pos.size > 1:
    a = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), pos[0]), ())
    b = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), pos[1]), ())
    assert float(a) != float(b)
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


def test_plain_export_matches_the_models_predictions(model):
  ctx, variables = model
  out = emb_lib.compute(ctx, variables, views=0, progress=False)
  probs = ctx.predict_split(variables, ctx.splits["val"])
  np.testing.assert_allclose(out["val"].backbone_probs, probs, rtol=1e-5, atol=1e-6)
  assert out["train"].features.shape[0] == len(ctx.splits["train"])


def test_views_use_the_real_augmentation_even_when_training_does_not_augment(model):
  ctx, variables = model
  assert not ctx.config.data.augment.enabled  # The smote arm trains its backbone on plain images.
  out = emb_lib.compute(ctx, variables, views=1, seed=0, progress=False)
  tr = ctx.splits["train"]
  pos = np.flatnonzero(tr.meta.labels[:, TARGET] > 0)
  e = out["train"]
  assert e.is_view.sum() == pos.size
  # Target images are augmented with probability 0.9 at full strength: most views moved off their source.
  moved = ~np.all(np.isclose(e.features[len(tr):], e.features[pos], rtol=1e-4, atol=1e-5), axis=1)
  assert moved.mean() > 0.5


def test_missing_embeddings_say_how_to_make_them(tmp_path):
  with pytest.raises(emb_lib.EmbeddingsError, match="jaxcxr.export_embeddings"):
    emb_lib.load(str(tmp_path))

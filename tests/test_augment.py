"""Augmentation: label-blind by default, independent parameters, shape, dtype, range, identity, the
label-dependent opt-in, no vertical flip; eval never augments."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import demo
from jaxcxr import train
from jaxcxr.data import augment
from jaxcxr.data import datasets
from jaxcxr.data import nih
from tests.helpers import tiny_config

HERNIA = nih.CLASSES.index("Hernia")
B, S = 256, 32


def _config(**fields):
  config = demo.get_config("oversample")
  config.unlock()
  config.data.augment.update(fields)
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  # Bright top half, dark bottom half, plus texture: an image whose up/down orientation is obvious.
  images = np.zeros((B, S, S, 1), np.uint8)
  images[:, :S // 2] = 200
  images += rng.integers(0, 40, images.shape, dtype=np.uint8)
  labels = np.zeros((B, 14), np.float32)
  labels[:B // 2, HERNIA] = 1  # First half carries the target.
  return images, labels


def _changed(out, images):
  return ~np.all(np.asarray(out) == images.astype(np.float32), axis=(1, 2, 3))


def test_off_gives_none():
  assert augment.make_augment_fn(_config(enabled=False)) is None
  assert augment.make_augment_fn(demo.get_config("baseline")) is None


def test_shape_dtype_range_and_no_vertical_flip():
  images, labels = _batch()
  fn = jax.jit(augment.make_augment_fn(_config(probability=1.0, minority_probability=1.0, strength=1.0,
                                               hflip=1.0)))
  out = np.asarray(fn(jax.random.key(0), images, labels))
  assert out.shape == images.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 255.0
  assert _changed(out, images).all()
  # At full strength, with every image augmented and flips on, the bright half stays on top.
  assert (out[:, :S // 2].mean((1, 2, 3)) > out[:, S // 2:].mean((1, 2, 3)) + 50).all()
  # Same key, same images; another key, other images.
  np.testing.assert_array_equal(out, fn(jax.random.key(0), images, labels))
  assert not np.array_equal(out, fn(jax.random.key(1), images, labels))


def test_identity_when_probability_zero():
  images, labels = _batch()
  fn = jax.jit(augment.make_augment_fn(_config(probability=0.0, minority_probability=0.0)))
  np.testing.assert_array_equal(fn(jax.random.key(0), images, labels), images.astype(np.float32))


def test_default_is_label_blind():
  a = demo.get_config("oversample").data.augment
  assert (a.label_dependent, a.probability, a.strength) == (False, 0.8, 1.0)
  images, labels = _batch()
  fn = jax.jit(augment.make_augment_fn(_config()))
  carries, carries_not = labels.copy(), labels.copy()
  carries[:, HERNIA], carries_not[:, HERNIA] = 1.0, 0.0
  for k in range(3):
    out = np.asarray(fn(jax.random.key(k), images, carries))
    np.testing.assert_array_equal(out, fn(jax.random.key(k), images, carries_not))
    np.testing.assert_array_equal(out, fn(jax.random.key(k), images, labels))
  # One probability for every image: about 0.8 of both halves are augmented.
  changed = np.stack([_changed(fn(jax.random.key(k), images, labels), images) for k in range(4)])
  n = changed.shape[0] * B // 2
  for half in (changed[:, :B // 2], changed[:, B // 2:]):
    assert abs(half.mean() - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n), half.mean()


def test_parameters_are_drawn_independently():
  keys = jax.random.split(jax.random.key(0), 20_000)
  params, noise = jax.jit(jax.vmap(lambda k: augment.sample_parameters(k, size=8)))(keys)
  r = np.stack([np.asarray(params[name]) for name in augment.PARAMETERS])
  assert r.shape == (len(augment.PARAMETERS), 20_000) and noise.shape == (20_000, 8, 8)
  assert np.all((r > 0) & (r < 1)) and np.allclose(r.mean(1), 0.5, atol=0.01)
  corr = np.corrcoef(np.concatenate([r, np.asarray(noise[:, 0, :2]).T]))
  off = corr[~np.eye(len(corr), dtype=bool)]
  assert np.abs(off).max() < 0.035, np.abs(off).max()  # 4.9 standard errors at n = 20,000.


def test_gamma_and_noise_are_independent_in_the_images():
  # Flat grey images with only gamma and noise on: the mean measures gamma, the spread the noise level.
  images = np.full((512, S, S, 1), 128, np.uint8)
  still = dict(rotation=0.0, scale=0.0, translate=0.0, shear=0.0, brightness=0.0, contrast=0.0)
  fn = jax.jit(augment.make_augment_fn(_config(probability=1.0, gamma=0.5, noise=0.05, **still)))
  out = np.asarray(fn(jax.random.key(0), images, np.zeros((512, 14), np.float32)))
  mean, spread = out.mean((1, 2, 3)), out.std((1, 2, 3))
  assert mean.std() > 5 and spread.std() > 1  # Both vary from image to image ...
  assert abs(np.corrcoef(mean, spread)[0, 1]) < 0.2  # ... independently (one shared draw gives |r| = 0.998).


def test_label_dependent_opt_in_probability_and_strength():
  images, labels = _batch()
  fn = jax.jit(augment.make_augment_fn(_config(label_dependent=True, probability=0.2, minority_probability=0.9,
                                               strength=0.1, minority_strength=1.0)))
  outs = [np.asarray(fn(jax.random.key(k), images, labels)) for k in range(4)]
  changed = np.stack([_changed(o, images) for o in outs])
  n = changed.shape[0] * B // 2
  minority, majority = changed[:, :B // 2].mean(), changed[:, B // 2:].mean()
  assert abs(minority - 0.9) < 4 * np.sqrt(0.9 * 0.1 / n), minority
  assert abs(majority - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n), majority
  # Among augmented images, the minority's (strength 1) change far more than the others' (strength 0.1).
  diff = np.stack([np.abs(o - images).mean((1, 2, 3)) for o in outs])
  assert np.median(diff[:, :B // 2][changed[:, :B // 2]]) > 2 * np.median(diff[:, B // 2:][changed[:, B // 2:]])


def test_horizontal_flip_when_asked():
  images, labels = _batch()
  still = dict(rotation=0.0, scale=0.0, translate=0.0, shear=0.0, brightness=0.0, contrast=0.0, gamma=0.0,
               noise=0.0, probability=1.0, minority_probability=1.0)
  flip = jax.jit(augment.make_augment_fn(_config(hflip=1.0, **still)))
  np.testing.assert_allclose(flip(jax.random.key(0), images, labels), images[:, :, ::-1].astype(np.float32),
                             atol=1e-3)
  assert demo.get_config("oversample").data.augment.hflip == 0.0  # Off by default: laterality matters.


def test_eval_never_augments_train_does(tiny_data_dir, tmp_path, monkeypatch):
  calls = []
  real_factory = augment.make_augment_fn

  def spy_factory(config):
    assert real_factory(config) is not None, "the oversample arm turns augmentation on"

    def spy(key, images, labels):
      calls.append(images.shape)
      return jnp.zeros(images.shape, jnp.float32)  # Blank images: predictions would change if used.
    return spy

  config = tiny_config(tiny_data_dir, arm="oversample")
  splits = datasets.load_splits(config)
  monkeypatch.setattr(train.augment, "make_augment_fn", spy_factory)
  labels = splits["train"].meta.labels
  trainer = train.Trainer(config, num_pos=labels.sum(0), num_total=len(labels), splits=splits)
  probs = trainer.predict(trainer.state, splits["val"])
  assert not calls  # predict (validation and test) never calls the augmentation.
  # Same predictions as the model context's plain predict step (which has no augmentation to call).
  plain = trainer.ctx.predict(train.variables_of(trainer.state),
                              splits["val"].images[splits["val"].rows])
  np.testing.assert_array_equal(probs, plain)
  # The train step does augment.
  batch = {"image": np.zeros((16, 32, 32, 1), np.uint8), "labels": np.zeros((16, 14), np.float32)}
  jax.eval_shape(trainer.train_step, trainer.state, trainer.ctx.global_batch(batch))
  assert calls

"""Plausible chest-radiograph augmentation, run inside the jitted train step with one key per image.

`make_augment_fn(config)` gives None (augmentation off) or a pure function

  fn(key, images, labels) -> images

images (B, S, S, 1) uint8 or float in [0, 255], labels (B, 14), result float32 (B, S, S, 1) in [0, 255].
By default the augmentation is label-blind: every training image is augmented with `probability`, its
ranges scaled by `strength`, and `labels` are not read, so one image and one key give one result whatever
the image carries. A preference for the minority comes from sampling instead (jaxcxr/data/sampling.py):
each repeat of a rare image draws its own key and so its own augmentation.

`label_dependent=True` is an opt-in kept to measure its effect (the `oversample_labelaug` arm): images
carrying `config.data.target` then use `minority_probability` and `minority_strength`. It creates a
shortcut: with minority_strength > strength, a wide black border or a large rotation occurs only on target
images, a cue that exists in training and never at test time.

An augmented image gets one affine warp (rotation, scale, translation, shear; bilinear, one gather per
image, black outside the film), an optional horizontal flip (`hflip`, 0 by default: laterality matters),
contrast about its mean, brightness, gamma and Gaussian noise. There is no vertical flip. Every random
parameter has its own independent draw (`sample_parameters`).

Why on the device: `python -m benchmarks.augment_bench` measured this function against the same work in
Grain workers (numpy/PIL). On 2 shared CPU cores (64 px, batch 64, medians): 2,569 images/s jitted versus
602 (0 workers) and 421 (2 workers) in Grain; float32 batches would also quadruple the host-to-device
bytes, while here uint8 travels and the warp is one gather per image.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr.data import nih


def _affine_grid(size, *, angle, scale, shear, shift):
  """Source coordinates (2, S, S) of each output pixel for a warp about the image centre (radians)."""
  c = (size - 1) / 2.0
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # The output is scale * rotation @ shear applied to source offsets from the centre; invert in closed form.
  inv_rot = jnp.array([[cos, sin], [-sin, cos]])
  inv_shear = jnp.array([[1.0, -jnp.tan(shear)], [0.0, 1.0]])
  inverse = inv_shear @ inv_rot / scale
  yy, xx = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                        indexing="ij")
  out = jnp.stack([yy - c - shift[0], xx - c - shift[1]])
  return jnp.einsum("ij,jhw->ihw", inverse, out) + c


# Independent uniforms in (0, 1) drawn per image, one per random parameter, in this order.
PARAMETERS = ("apply", "rotation", "scale", "shear", "shift_y", "shift_x", "hflip", "contrast", "brightness",
              "gamma", "noise")


def sample_parameters(key, *, size):
  """One image's random numbers: (dict name -> uniform in (0, 1) for each of PARAMETERS, (S, S) normals).

  One normal draw per image (a single threefry call compiles in a fraction of the time of a dozen): the
  first len(PARAMETERS) values become independent uniforms through the normal CDF, the rest are the pixel
  noise. No two parameters share a number.
  """
  n = len(PARAMETERS)
  z = jax.random.normal(key, (n + size * size,))
  r = jax.scipy.special.ndtr(z[:n])
  return {name: r[i] for i, name in enumerate(PARAMETERS)}, z[n:].reshape(size, size)


def _augment_one(key, image, *, prob, strength, a):
  """One (S, S) float image in [0, 255], returned as is with probability 1 - prob; `a` holds the
  config's ranges at strength 1."""
  size = image.shape[0]
  r, noise = sample_parameters(key, size=size)
  u = lambda name: (2.0 * r[name] - 1.0) * strength  # Uniform in +/- strength.
  grid = _affine_grid(size, angle=u("rotation") * np.deg2rad(a.rotation), scale=1.0 + u("scale") * a.scale,
                      shear=u("shear") * np.deg2rad(a.shear),
                      shift=jnp.stack([u("shift_y"), u("shift_x")]) * a.translate * size)
  x = jax.scipy.ndimage.map_coordinates(image / 255.0, [grid[0], grid[1]], order=1, mode="constant", cval=0.0)
  x = jnp.where(r["hflip"] < a.hflip, x[:, ::-1], x)
  mean = x.mean()
  x = (x - mean) * (1.0 + u("contrast") * a.contrast) + mean + u("brightness") * a.brightness
  x = jnp.clip(x, 0.0, 1.0) ** jnp.exp(u("gamma") * a.gamma)
  sigma = r["noise"] * strength * a.noise
  x = jnp.clip(x + sigma * noise, 0.0, 1.0)
  return jnp.where(r["apply"] < prob, x * 255.0, image)


def make_augment_fn(config):
  """None when `config.data.augment.enabled` is False, else fn(key, images, labels) -> float32 images."""
  a = config.data.get("augment")
  if a is None or not a.enabled:  # Configs saved before augmentation existed have no block.
    return None
  label_dependent = bool(a.get("label_dependent", True))  # Configs saved before the field were label-dependent.
  for field in ("probability", "minority_probability", "hflip"):
    if not 0.0 <= a[field] <= 1.0:
      raise ValueError(f"data.augment.{field} must be in [0, 1], got {a[field]}.")
  target = nih.CLASSES.index(config.data.target)
  ranges = types.SimpleNamespace(**a.to_dict())  # Plain floats, closed over by the jitted function.

  def augment(key, images, labels):
    if label_dependent:  # The opt-in shortcut (see the module docstring).
      minority = labels[:, target] > 0.5
      prob = jnp.where(minority, a.minority_probability, a.probability)
      strength = jnp.where(minority, a.minority_strength, a.strength)
    else:  # Label-blind: `labels` is not read.
      prob = jnp.full(images.shape[:1], a.probability, jnp.float32)
      strength = jnp.full(images.shape[:1], a.strength, jnp.float32)
    # One key for the batch (split per image), or already one key per image.
    keys = key if jnp.ndim(key) else jax.random.split(key, images.shape[0])
    one = lambda k, im, p, s: _augment_one(k, im, prob=p, strength=s, a=ranges)
    return jax.vmap(one)(keys, images[..., 0].astype(jnp.float32), prob, strength)[..., None]

  return augment

"""Plausible chest-radiograph augmentation, run inside the jitted train step with one key per image.

`make_augment_fn(config)` gives None (augmentation off) or a pure function

  fn(key, images, labels) -> images

images (B, S, S, 1) uint8 or float in [0, 255], labels (B, 14), result float32 (B, S, S, 1) in [0, 255].
Each image is augmented with a probability, and with ranges scaled by a strength, chosen by whether it
carries `config.data.target` (`minority_probability`, `minority_strength`) or not (`probability`,
`strength`). An augmented image gets one affine warp (rotation, scale, translation, shear; bilinear, one
gather per image, black outside the film), an optional horizontal flip (`hflip`, 0 by default: laterality
matters), contrast about its mean, brightness, gamma and Gaussian noise. There is no vertical flip.

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


def _augment_one(key, image, *, prob, strength, a):
  """One (S, S) float image in [0, 255], returned as is with probability 1 - prob; `a` holds the
  config's ranges at strength 1."""
  size = image.shape[0]
  # One normal draw per image (a single threefry call compiles in a fraction of the time of ten): the
  # first values become uniforms through the normal CDF, the rest are the pixel noise.
  z = jax.random.normal(key, (10 + size * size,))
  r = jax.scipy.special.ndtr(z[:10])  # Uniform in (0, 1).
  u = lambda i: (2.0 * r[i] - 1.0) * strength  # Uniform in +/- strength.
  grid = _affine_grid(size, angle=u(1) * np.deg2rad(a.rotation), scale=1.0 + u(2) * a.scale,
                      shear=u(3) * np.deg2rad(a.shear), shift=jnp.stack([u(4), u(5)]) * a.translate * size)
  x = jax.scipy.ndimage.map_coordinates(image / 255.0, [grid[0], grid[1]], order=1, mode="constant", cval=0.0)
  x = jnp.where(r[6] < a.hflip, x[:, ::-1], x)
  mean = x.mean()
  x = (x - mean) * (1.0 + u(7) * a.contrast) + mean + u(8) * a.brightness
  x = jnp.clip(x, 0.0, 1.0) ** jnp.exp(u(9) * a.gamma)
  sigma = r[9] * strength * a.noise
  x = jnp.clip(x + sigma * z[10:].reshape(size, size), 0.0, 1.0)
  return jnp.where(r[0] < prob, x * 255.0, image)


def make_augment_fn(config):
  """None when `config.data.augment.enabled` is False, else fn(key, images, labels) -> float32 images."""
  a = config.data.get("augment")
  if a is None or not a.enabled:  # Configs saved before augmentation existed have no block.
    return None
  for field in ("probability", "minority_probability", "hflip"):
    if not 0.0 <= a[field] <= 1.0:
      raise ValueError(f"data.augment.{field} must be in [0, 1], got {a[field]}.")
  target = nih.CLASSES.index(config.data.target)
  ranges = types.SimpleNamespace(**a.to_dict())  # Plain floats, closed over by the jitted function.

  def augment(key, images, labels):
    minority = labels[:, target] > 0.5
    prob = jnp.where(minority, a.minority_probability, a.probability)
    strength = jnp.where(minority, a.minority_strength, a.strength)
    # One key for the batch (split per image), or already one key per image.
    keys = key if jnp.ndim(key) else jax.random.split(key, images.shape[0])
    one = lambda k, im, p, s: _augment_one(k, im, prob=p, strength=s, a=ranges)
    return jax.vmap(one)(keys, images[..., 0].astype(jnp.float32), prob, strength)[..., None]

  return augment

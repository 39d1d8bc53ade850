"""Heatmaps: Grad-CAM equals CAM for the pooled linear head, holds for other heads, and points the right way."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image
import pytest

from jaxcxr import heatmaps

SIZE, CELL = 32, 8  # A 4x4 feature map over a 32-px image.


class Toy(nn.Module):
  """Feature map = (8x8 average of the image)^2 in two channels; the models' head (pool + Dense 'head').

  Only bright regions have features, so the logit is driven by exactly where the image is bright."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    f = nn.avg_pool(x, (CELL, CELL), strides=(CELL, CELL)) ** 2
    fmap = jnp.concatenate([f, 0.5 * f], axis=-1)
    pre = jnp.mean(fmap, axis=(1, 2))
    return nn.Dense(3, name="head")(pre), {"pre_logits": pre, "feature_map": fmap}


def _toy_variables():
  kernel = np.array([[2.0, -1.0, 0.5], [1.0, -1.0, 0.5]], np.float32)  # Class 0 likes bright, 1 dislikes.
  return {"params": {"head": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(3)}}}


def _image(row_cell, col_cell):
  a = np.zeros((SIZE, SIZE, 1), np.uint8)
  a[row_cell * CELL:(row_cell + 1) * CELL, col_cell * CELL:(col_cell + 1) * CELL] = 255
  return a


def _preprocess(images):
  return images.astype(jnp.float32) / 255.0


def test_grad_cam_equals_cam_for_the_pooled_linear_head():
  rng = np.random.default_rng(0)
  fmap = jnp.asarray(rng.standard_normal((5, 4, 3, 8)), jnp.float32)
  kernel = rng.standard_normal((8, 14)).astype(np.float32)
  head = heatmaps.gap_linear_head({"kernel": kernel, "bias": rng.standard_normal(14).astype(np.float32)})
  cls = jnp.asarray([0, 3, 7, 13, 3])
  got = heatmaps.grad_cam(head_fn=head, feature_map=fmap, class_index=cls)
  cam = heatmaps.class_activation_map(fmap, kernel, cls)
  # alpha = kernel column / (h w): Grad-CAM is ReLU(CAM) / (h w).
  np.testing.assert_allclose(got, np.maximum(np.asarray(cam), 0) / 12, rtol=1e-5, atol=1e-6)
  assert (np.asarray(cam) < 0).any() and (np.asarray(got) > 0).any()  # The ReLU mattered, maps not empty.
  # After scaling, the CAM convention and Grad-CAM give the same picture.
  np.testing.assert_allclose(heatmaps.scale_to_unit(got), heatmaps.scale_to_unit(jnp.maximum(cam, 0)), atol=1e-6)


def test_grad_cam_holds_for_a_nonlinear_head():
  # logit_c = sum_k w_kc * mean(A_k)^2: d/dA_kij = 2 w_kc mean(A_k) / (h w), so alpha_k = 2 w_kc mean(A_k) / (h w).
  rng = np.random.default_rng(1)
  fmap = jnp.asarray(rng.standard_normal((3, 4, 4, 6)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)
  head = lambda f: jnp.mean(f, axis=(1, 2)) ** 2 @ w
  cls = jnp.asarray([1, 0, 1])
  got = heatmaps.grad_cam(head_fn=head, feature_map=fmap, class_index=cls)
  alpha = 2 * w[:, cls].T * jnp.mean(fmap, axis=(1, 2)) / 16
  expected = np.maximum(np.einsum("bhwk,bk->bhw", fmap, alpha), 0)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Not CAM: with this head the channel weights depend on the image.
  cam = np.maximum(np.asarray(heatmaps.class_activation_map(fmap, w, cls)), 0) / 16
  assert not np.allclose(got, cam, atol=1e-3)


@pytest.mark.parametrize("method", heatmaps.METHODS)
@pytest.mark.parametrize("cell", [(0, 0), (0, 2), (3, 1)])
def test_map_peaks_where_the_evidence_is(method, cell):
  # (0, 2) and (3, 1) are not on the diagonal: a transposed or flipped map would peak elsewhere.
  fn = heatmaps.make_heatmap_fn(Toy(), method=method, preprocess=_preprocess, num_samples=8) \
      if method == "smoothgrad" else heatmaps.make_heatmap_fn(Toy(), method=method, preprocess=_preprocess)
  maps = np.asarray(fn(_toy_variables(), _image(*cell)[None], jnp.asarray([0]), jax.random.key(0)))
  assert maps.shape == (1, SIZE, SIZE) and 0 <= maps.min() and np.isclose(maps.max(), 1.0)
  r, c = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
  assert (r // CELL, c // CELL) == cell
  inside = maps[0][cell[0] * CELL:(cell[0] + 1) * CELL, cell[1] * CELL:(cell[1] + 1) * CELL].mean()
  assert inside > 3 * maps[0].mean()


def test_grad_cam_of_a_class_that_dislikes_the_evidence_is_empty():
  fn = heatmaps.make_heatmap_fn(Toy(), method="gradcam", preprocess=_preprocess)
  maps = np.asarray(fn(_toy_variables(), _image(1, 1)[None], jnp.asarray([1]), jax.random.key(0)))
  assert (maps == 0).all()  # ReLU: no positive evidence for class 1 anywhere.


def test_batched_and_sharded_equals_one_by_one():
  mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  cells = [(0, 0), (1, 2), (3, 3), (2, 0), (0, 3), (3, 0)]
  images = np.stack([_image(*c) for c in cells])
  cls = np.array([0, 2, 0, 2, 0, 0])
  fn = heatmaps.make_heatmap_fn(Toy(), method="gradcam", preprocess=_preprocess, data_sharding=data,
                                replicated=rep)
  done = []
  put = lambda a: jax.device_put(a, data)
  maps = heatmaps.compute(fn, _toy_variables(), images, cls, batch_size=4, put=put, progress=done.append)
  assert maps.shape == (6, SIZE, SIZE) and done == [4, 2]
  single = heatmaps.make_heatmap_fn(Toy(), method="gradcam", preprocess=_preprocess)
  for i in range(6):
    one = single(_toy_variables(), images[i:i + 1], jnp.asarray(cls[i:i + 1]), jax.random.key(0))
    np.testing.assert_allclose(maps[i], np.asarray(one)[0], atol=1e-6)


def _saved_axes_pixels(path, fig, ax):
  """The saved PNG's pixels inside the axes (row 0 = top), as float RGB in [0, 1]."""
  saved = np.asarray(Image.open(path).convert("RGB"), np.float64) / 255
  fig.canvas.draw()
  box = ax.get_window_extent()  # Display pixels, origin at the bottom left.
  height = saved.shape[0]
  return saved[int(round(height - box.y1)):int(round(height - box.y0)), int(round(box.x0)):int(round(box.x1))]


@pytest.mark.parametrize("cell", [(0, 0), (0, 2), (3, 1)])
def test_saved_overlay_is_not_flipped_or_transposed(tmp_path, cell):
  fn = heatmaps.make_heatmap_fn(Toy(), method="gradcam", preprocess=_preprocess)
  heat = np.asarray(fn(_toy_variables(), _image(*cell)[None], jnp.asarray([0]), jax.random.key(0)))[0]
  black = np.zeros((SIZE, SIZE), np.uint8)  # Only the heat colours the picture.
  path = str(tmp_path / "overlay.png")
  fig, ax = heatmaps.overlay_figure(black, heat, title_text=heatmaps.title("Hernia", 0.9123))
  fig.savefig(path, dpi=fig.dpi)
  pixels = _saved_axes_pixels(path, fig, ax)
  hot = pixels[..., 0] - pixels[..., 2]  # jet: red where the map is high, blue where low.
  r, c = np.unravel_index(np.argmax(hot), hot.shape)
  got = (int(r * 4 // pixels.shape[0]), int(c * 4 // pixels.shape[1]))
  assert got == cell
  assert ax.get_title() == "Hernia  p = 0.912"
  assert len(fig.axes) == 2  # The overlay and its colour bar.


def test_save_overlay_and_grid_write_pngs(tmp_path):
  image = np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (SIZE, 1))
  heat = np.zeros((SIZE, SIZE), np.float32)
  heat[4:10, 20:30] = 1
  p = heatmaps.save_overlay(str(tmp_path / "a.png"), image, heat, title_text="Mass", boxes=[(20, 4, 10, 6)])
  assert Image.open(p).size == (500, 400)
  panels = [dict(image=image, heatmap=heat, title_text=f"#{i}", boxes=[(1, 2, 3, 4)]) for i in range(5)]
  g = heatmaps.save_grid(str(tmp_path / "grid.png"), panels, ncols=3)
  assert Image.open(g).size[0] > Image.open(g).size[1] > 0


def test_the_models_head_is_the_pooled_linear_head():
  """gap_linear_head reproduces the logits of the head every jaxcxr model ends with (common.pool_and_head)
  from the feature map it returns."""
  from jaxcxr.models import common  # pylint: disable=g-import-not-at-top

  class Head(nn.Module):

    @nn.compact
    def __call__(self, x):
      return common.pool_and_head(x, num_classes=14, head_bias_init=None)

  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5, 16)), jnp.float32)
  try:
    variables = Head().init(jax.random.key(0), x)
  except TypeError:
    pytest.skip("pool_and_head returns logits only here; (logits, aux) arrives with the model-context change")
  logits, aux = Head().apply(variables, x)
  np.testing.assert_array_equal(aux["feature_map"], x)
  np.testing.assert_allclose(heatmaps.gap_linear_head(variables["params"]["head"])(aux["feature_map"]), logits,
                             rtol=1e-5, atol=1e-5)

"""Where a model looked: class heatmaps (Grad-CAM, SmoothGrad), jitted and batched, and overlay PNGs.

  fn = heatmaps.make_heatmap_fn(model, method="gradcam", preprocess=model_context.normalize)
  maps = fn(variables, images, class_index, key)      # uint8 (B, S, S, 1), (B,) int -> (B, S, S) in [0, 1]
  heatmaps.save_overlay("x.png", image, maps[0], title=heatmaps.title("Hernia", 0.91))

Each map is for one (image, class) pair, so a batch can mix classes. Maps are upsampled to the image size,
row 0 at the top, column 0 at the left, as the image array is; each is scaled to a maximum of 1 (a map that
is zero everywhere stays zero). Methods:

- 'gradcam' (Selvaraju et al. 2017) on the last convolutional stage, the map the model's head pools: the
  class logit's gradient with respect to that map, averaged over positions, weights its channels;
  ReLU of the weighted sum. With jaxcxr's global-average-pooled linear head this equals CAM (Zhou et al.
  2016), the map times the head's kernel column (a test checks it), but the gradient makes it hold for any
  head function.
- 'smoothgrad' (Smilkov et al. 2017): the absolute gradient of the class logit with respect to the input
  pixels, averaged over noisy copies of the image. Better for small findings (nodules, a thin
  pneumothorax rim): Grad-CAM's map has the last stage's resolution, 1/32 of the image (7x7 at 224 px,
  2x2 at the demo's 64 px), so a finding a few pixels wide falls inside one cell and the upsampled map can
  only say which cell; input gradients have the image's resolution, and averaging over noise removes most
  of their pixel-to-pixel jitter. The price: `num_samples` backward passes through the whole network.
"""

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("gradcam", "smoothgrad")
SMOOTHGRAD_SAMPLES = 16  # Noisy copies per map; Smilkov et al. see little change beyond 50, most by 15.
SMOOTHGRAD_NOISE = 0.15  # Noise std as a fraction of each image's value range (they recommend 10-20%).


# ----------------------------------------------------------------------------------------------------------
# The maps.
# ----------------------------------------------------------------------------------------------------------


def _select(logits, class_index):
  """The logit of class class_index[b] for each image b, summed (their gradients stay per image)."""
  return jnp.take_along_axis(logits, class_index[:, None], axis=1).sum()


def gap_linear_head(head_params) -> Callable:
  """The head of jaxcxr's models as a function of the feature map: global average pool, then the Dense
  layer named 'head' (models/common.py) with these {'kernel', 'bias'}: (B, h, w, C) -> (B, K) logits."""
  kernel = jnp.asarray(head_params["kernel"], jnp.float32)
  bias = jnp.asarray(head_params["bias"], jnp.float32)
  return lambda feature_map: jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2)) @ kernel + bias


def grad_cam(*, head_fn: Callable, feature_map, class_index):
  """Grad-CAM of class class_index[b] on feature_map[b]: (B, h, w), non-negative, not yet scaled.

  alpha[b, k] = mean over (i, j) of d logit[b, c_b] / d feature_map[b, i, j, k];
  map[b] = ReLU(sum_k alpha[b, k] * feature_map[b, :, :, k]).
  """
  fmap = jnp.asarray(feature_map, jnp.float32)
  grads = jax.grad(lambda f: _select(head_fn(f), class_index))(fmap)
  alpha = jnp.mean(grads, axis=(1, 2))
  return jax.nn.relu(jnp.einsum("bhwk,bk->bhw", fmap, alpha))


def class_activation_map(feature_map, kernel, class_index):
  """CAM (Zhou et al. 2016) for a pooled linear head: feature_map[b] @ kernel[:, c_b], (B, h, w), signed."""
  fmap = jnp.asarray(feature_map, jnp.float32)
  return jnp.einsum("bhwk,kb->bhw", fmap, jnp.asarray(kernel, jnp.float32)[:, class_index])


def smoothgrad(*, logit_fn: Callable, x, class_index, key, num_samples: int = SMOOTHGRAD_SAMPLES,
               noise: float = SMOOTHGRAD_NOISE):
  """SmoothGrad: mean over `num_samples` noisy copies of |d logit[b, c_b] / d x[b]|, summed over channels.

  x: (B, H, W, C) model inputs; the noise std is `noise` times each image's value range. Returns (B, H, W).
  """
  x = jnp.asarray(x, jnp.float32)
  sigma = noise * (jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3), keepdims=True))
  grad_fn = jax.grad(lambda xi: _select(logit_fn(xi), class_index))

  def one(k):
    g = grad_fn(x + sigma * jax.random.normal(k, x.shape, x.dtype))
    return jnp.sum(jnp.abs(g), axis=-1)

  # One copy at a time: memory stays that of one backward pass, whatever num_samples is.
  return jnp.mean(jax.lax.map(one, jax.random.split(key, num_samples)), axis=0)


def upsample(maps, size: int):
  """(B, h, w) -> (B, size, size), bilinear (half-pixel centres, as the image's own resize)."""
  return jax.image.resize(maps, (maps.shape[0], size, size), method="bilinear")


def scale_to_unit(maps):
  """Each non-negative map divided by its maximum, so it peaks at 1; an all-zero map stays zero."""
  peak = jnp.max(maps, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def heatmap_step(variables, images, class_index, key, *, model, method: str, preprocess: Callable,
                 head_fn_of: Callable = None, num_samples: int = SMOOTHGRAD_SAMPLES,
                 noise: float = SMOOTHGRAD_NOISE):
  """Maps (B, S, S) in [0, 1] of class class_index[b] for uint8 images (B, S, S, 1).

  `model.apply(variables, x, train=False)` must return (logits, {'feature_map': (B, h, w, C), ...});
  `head_fn_of(params)` gives the head as a function of that map (default: `gap_linear_head` of
  params['head']).
  """
  x = preprocess(images)
  size = images.shape[1]
  class_index = jnp.asarray(class_index, jnp.int32)
  if method == "gradcam":
    _, aux = model.apply(variables, x, train=False)
    head_fn = (head_fn_of or (lambda p: gap_linear_head(p["head"])))(variables["params"])
    maps = grad_cam(head_fn=head_fn, feature_map=aux["feature_map"], class_index=class_index)
  elif method == "smoothgrad":
    maps = smoothgrad(logit_fn=lambda xi: model.apply(variables, xi, train=False)[0], x=x,
                      class_index=class_index, key=key, num_samples=num_samples, noise=noise)
  else:
    raise ValueError(f"Unknown heatmap method {method!r}; choose one of {', '.join(METHODS)}.")
  return scale_to_unit(upsample(maps, size))


def make_heatmap_fn(model, *, method: str = "gradcam", preprocess: Callable, data_sharding=None,
                    replicated=None, **kwargs):
  """`heatmap_step` jitted: fn(variables, images, class_index, key) -> (B, S, S).

  With `data_sharding` (NamedSharding over the mesh's 'data' axis) and `replicated`, the batch is split
  over all devices (B a multiple of the device count); the maps come back replicated.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown heatmap method {method!r}; choose one of {', '.join(METHODS)}.")
  step = functools.partial(heatmap_step, model=model, method=method, preprocess=preprocess, **kwargs)
  if data_sharding is None:
    return jax.jit(step)
  return jax.jit(step, in_shardings=(replicated, data_sharding, data_sharding, replicated),
                 out_shardings=replicated)


def compute(fn, variables, images, class_index, *, batch_size: int, seed: int = 0, put: Callable = None,
            progress: Optional[Callable] = None) -> np.ndarray:
  """Runs `fn` over (images[i], class_index[i]) pairs in batches of `batch_size` (the last one padded);
  returns (N, S, S) float32 numpy. `put(array)` places a batch (e.g. ModelContext.global_batch);
  `progress(n)` is called with the pairs done per batch."""
  images = np.asarray(images)
  class_index = np.asarray(class_index, np.int32)
  n = len(images)
  out = []
  for b, start in enumerate(range(0, n, batch_size)):
    stop = min(start + batch_size, n)
    imgs = np.zeros((batch_size, *images.shape[1:3], 1), np.uint8)
    imgs[:stop - start] = images[start:stop].reshape(stop - start, *images.shape[1:3], 1)
    cls = np.zeros((batch_size,), np.int32)
    cls[:stop - start] = class_index[start:stop]
    if put is not None:
      imgs, cls = put(imgs), put(cls)
    maps = fn(variables, imgs, cls, jax.random.fold_in(jax.random.key(seed), b))
    out.append(np.asarray(jax.device_get(maps))[:stop - start].astype(np.float32))
    if progress is not None:
      progress(stop - start)
  if not out:
    return np.zeros((0, *images.shape[1:3]), np.float32)
  return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------
# Overlay pictures.
# ----------------------------------------------------------------------------------------------------------


def title(class_name: str, probability: Optional[float], *, extra: str = "") -> str:
  """'Hernia  p = 0.912' (and `extra`), the overlays' title."""
  p = "" if probability is None else f"  p = {probability:.3f}"
  return f"{class_name}{p}{extra}"


def draw_overlay(ax, image, heatmap, *, title_text: str = "", boxes: Sequence = (), alpha: float = 0.45,
                 cmap: str = "jet", box_colour: str = "lime"):
  """Draws the radiograph in grey and `heatmap` (same size, [0, 1]) translucent on `ax`; boxes are
  (x, y, w, h) in pixels, x to the right and y down from the image's top-left corner. Returns the
  heatmap's image artist (for a colour bar)."""
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.ndim == 3:
    image = image[..., 0]
  h, w = image.shape
  extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # Pixel (r, c) centred at (c, r), row 0 on top.
  ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest", extent=extent)
  artist = ax.imshow(np.asarray(heatmap, np.float32), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0,
                     interpolation="nearest", extent=extent)
  for x, y, bw, bh in boxes:
    ax.add_patch(patches.Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, edgecolor=box_colour, linewidth=1.5))
  ax.set_xlim(-0.5, w - 0.5)
  ax.set_ylim(h - 0.5, -0.5)
  ax.set_title(title_text, fontsize=9)
  ax.set_axis_off()
  return artist


def overlay_figure(image, heatmap, *, title_text: str, boxes: Sequence = (), size_inches: float = 4.0,
                   dpi: int = 100, **kwargs):
  """(figure, axes) of one overlay with a colour bar; a Figure of its own (no pyplot state)."""
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top
  fig = mpl_figure.Figure(figsize=(size_inches * 1.25, size_inches), dpi=dpi)
  backend_agg.FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  artist = draw_overlay(ax, image, heatmap, title_text=title_text, boxes=boxes, **kwargs)
  fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.04, label="heat (fraction of the map's maximum)")
  return fig, ax


def save_overlay(path: str, image, heatmap, *, title_text: str, boxes: Sequence = (), **kwargs) -> str:
  """Writes one overlay PNG (Agg) and returns its path."""
  fig, _ = overlay_figure(image, heatmap, title_text=title_text, boxes=boxes, **kwargs)
  fig.savefig(path, dpi=fig.dpi)
  return path


def save_grid(path: str, panels: Sequence[dict], *, ncols: int = 4, panel_inches: float = 2.6,
              suptitle: str = "") -> str:
  """Writes a grid of overlays: `panels` are dicts with image, heatmap, title_text and optional boxes;
  one shared colour bar."""
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top
  n = max(len(panels), 1)
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  fig = mpl_figure.Figure(figsize=(panel_inches * ncols + 0.8, panel_inches * nrows + 0.6), dpi=100)
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  artist = None
  for ax, panel in zip(axes.ravel(), panels):
    artist = draw_overlay(ax, panel["image"], panel["heatmap"], title_text=panel.get("title_text", ""),
                          boxes=panel.get("boxes", ()))
  for ax in axes.ravel()[len(panels):]:
    ax.set_axis_off()
  if artist is not None:
    fig.colorbar(artist, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02)
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  fig.savefig(path, dpi=fig.dpi)
  return path

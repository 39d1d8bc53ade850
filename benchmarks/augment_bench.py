"""Where should augmentation run? Images/s of the same augmentation on the device and in Grain workers.

  python -m benchmarks.augment_bench                                   # demo sizes (64 px, batch 64)
  python -m benchmarks.augment_bench --image_size=224 --batch_size=256 --model=resnet50 --workers=8

Side by side, as medians of --repeats runs of --batches batches each, on synthetic uint8 images:
  device        uint8 batch -> device, then the jitted `augment.make_augment_fn` (one gather per image).
  host w=K      the same augmentation in numpy/PIL inside a Grain pipeline (K worker processes), its float32
                batch -> device.
  step          the jitted train step alone on device-resident data, without and with augmentation
                inside it (what augmentation costs the step), when --model is given.
Nothing is written; the figures are printed.
"""

import time

from absl import app
from absl import flags
import grain
import jax
import numpy as np
from PIL import Image

from configs import demo
from jaxcxr import losses
from jaxcxr import train
from jaxcxr.data import augment
from jaxcxr.data import nih

flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_integer("batches", 20, "Batches per timed run.")
flags.DEFINE_integer("repeats", 5, "Timed runs; the median is reported.")
flags.DEFINE_multi_integer("workers", [0, 2], "Grain worker counts for the host placement.")
flags.DEFINE_string("model", "resnet10_w16", "Model for the train-step figures ('' to skip them).")
FLAGS = flags.FLAGS


def _config():
  config = demo.get_config("oversample")
  config.unlock()
  config.data.image_size = FLAGS.image_size
  config.model.name = FLAGS.model or "resnet_tiny"
  return config


class _Source(grain.sources.RandomAccessDataSource):
  """Synthetic uint8 images and labels (10% carry the target), held in memory."""

  def __init__(self, n, size, target):
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    self.labels = np.zeros((n, 14), np.float32)
    self.labels[rng.random(n) < 0.1, target] = 1

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "labels": self.labels[i]}


class _HostAugment(grain.transforms.RandomMap):
  """The same augmentation as data/augment.py, in numpy and PIL, one image at a time."""

  def __init__(self, config):
    self.a, self.t = config.data.augment, nih.CLASSES.index(config.data.target)

  def random_map(self, element, rng):
    a = self.a
    minority = a.label_dependent and element["labels"][self.t] > 0.5  # Label-blind unless opted in.
    prob, s = (a.minority_probability, a.minority_strength) if minority else (a.probability, a.strength)
    image = element["image"][..., 0]
    if rng.random() >= prob:
      return {"image": image.astype(np.float32)[..., None], "labels": element["labels"]}
    u = lambda: rng.uniform(-1, 1) * s
    size = image.shape[0]
    angle, scale, shear = np.deg2rad(u() * a.rotation), 1 + u() * a.scale, np.deg2rad(u() * a.shear)
    shift = np.array([u(), u()]) * a.translate * size
    cos, sin = np.cos(angle), np.sin(angle)
    inv = np.array([[1, -np.tan(shear)], [0, 1]]) @ np.array([[cos, sin], [-sin, cos]]) / scale
    c = (size - 1) / 2
    # PIL maps output (x, y) to input with (a, b, c, d, e, f); ours is in (y, x) order.
    m = inv[::-1, ::-1]
    off = np.array([c, c]) - m @ (np.array([c, c]) + shift[::-1])
    im = Image.fromarray(image).transform((size, size), Image.Transform.AFFINE,
                                          data=(m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1]),
                                          resample=Image.Resampling.BILINEAR, fillcolor=0)
    x = np.asarray(im, np.float32) / 255.0
    if rng.random() < a.hflip:
      x = x[:, ::-1]
    mean = x.mean()
    x = (x - mean) * (1 + u() * a.contrast) + mean + u() * a.brightness
    x = np.clip(x, 0, 1) ** np.exp(u() * a.gamma)
    x = np.clip(x + rng.uniform() * s * a.noise * rng.standard_normal(x.shape, np.float32), 0, 1)
    return {"image": (x * 255.0).astype(np.float32)[..., None], "labels": element["labels"]}


def _median_rate(run, n_images):
  run()  # Warm-up (compilation, worker start).
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return n_images / float(np.median(times))


def bench_device(config, source):
  fn = jax.jit(augment.make_augment_fn(config))
  b = FLAGS.batch_size
  batches = [(source.images[i * b:(i + 1) * b], source.labels[i * b:(i + 1) * b]) for i in range(FLAGS.batches)]

  def run():
    out = None
    for k, (images, labels) in enumerate(batches):
      out = fn(jax.random.key(k), jax.device_put(images), jax.device_put(labels))
    out.block_until_ready()
  return _median_rate(run, FLAGS.batches * b)


def bench_host(config, source, workers):
  ds = (grain.MapDataset.source(source).seed(0).shuffle().repeat().random_map(_HostAugment(config))
        .batch(FLAGS.batch_size, drop_remainder=True).to_iter_dataset())
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  it = iter(ds)

  def run():
    out = None
    for _ in range(FLAGS.batches):
      out = jax.device_put(next(it)["image"])
    out.block_until_ready()
  return _median_rate(run, FLAGS.batches * FLAGS.batch_size)


def bench_step(config, source, with_augment):
  model = train.create_model(config, prevalence=np.full(14, 0.05))
  loss_fn = losses.get_loss_fn(config.loss, num_pos=np.ones(14), num_total=10)
  mesh = train.make_mesh(jax.local_devices()[:1])
  step, _ = train.jit_steps(mesh, loss_fn, augment_fn=augment.make_augment_fn(config) if with_augment else None)
  state = train.create_train_state(config, model, jax.random.key(0), FLAGS.image_size)
  b = FLAGS.batch_size
  batch = jax.device_put({"image": source.images[:b], "labels": source.labels[:b]})
  holder = {"state": state}

  def run():
    s = holder["state"]
    for _ in range(FLAGS.batches):
      s, m = step(s, batch)
    m["loss"].block_until_ready()
    holder["state"] = s
  return _median_rate(run, FLAGS.batches * b)


def main(argv):
  del argv
  config = _config()
  source = _Source(FLAGS.batch_size * FLAGS.batches, FLAGS.image_size, nih.CLASSES.index(config.data.target))
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"{FLAGS.image_size} px, batch {FLAGS.batch_size}, median of {FLAGS.repeats} x {FLAGS.batches} batches")
  rows = [("augment on device (uint8 -> device, jitted)", bench_device(config, source))]
  for w in FLAGS.workers:
    rows.append((f"augment in Grain, numpy/PIL, {w} workers (float32 -> device)", bench_host(config, source, w)))
  if FLAGS.model:
    for aug in (False, True):
      rows.append((f"train step {FLAGS.model}, {'with' if aug else 'without'} on-device augmentation",
                   bench_step(config, source, aug)))
  for name, rate in rows:
    print(f"  {name:<72}{rate:>10.0f} images/s")


if __name__ == "__main__":
  app.run(main)

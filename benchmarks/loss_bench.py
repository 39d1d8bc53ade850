"""What does each loss cost the train step? The demo model's jitted step with every loss, side by side.

  python -m benchmarks.loss_bench                        # the demo: resnet10_w16, 64 px, batch 64
  python -m benchmarks.loss_bench --model=resnet50 --image_size=224 --batch_size=256   # on an accelerator

Each loss gets its own jitted train step (`train.jit_steps` on one device, as the trainer builds it; the
same initial state, one synthetic uint8 batch already on the device, NIH-like label counts for the weights,
margins and priors). After a compile and a warm-up, --repeats rounds each time --steps steps of every
loss, the losses in a rotated order each round, so that load from other jobs falls on all of them alike;
the figure is the median ms/step over the rounds, and 'vs bce' its ratio to plain BCE's median. A second
table times the loss alone (value and gradient of the mean loss on (batch, 14) logits, jitted), which is
what the loss itself adds, free of the step's noise. Nothing is written; the figures are printed.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import demo
from jaxcxr import losses
from jaxcxr import model_context
from jaxcxr import train

flags.DEFINE_string("model", "resnet10_w16", "Model of the train step.")
flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
flags.DEFINE_integer("batch_size", 64, "Images per step.")
flags.DEFINE_integer("steps", 5, "Steps per timed window.")
flags.DEFINE_integer("repeats", 7, "Rounds (windows per loss); the median is reported.")
flags.DEFINE_list("losses", list(losses.LOSS_NAMES), "Losses to time; bce is always included.")
FLAGS = flags.FLAGS

# NIH ChestX-ray14 positives per class in the official train_val list (about 86,500 images), rounded:
# they set the weights, margins and priors; speed does not depend on their values.
NIH_NUM_POS = np.array([8300, 2000, 9300, 15800, 4200, 4600, 1000, 2600, 3700, 1600, 1400, 1300, 2300, 140])
NIH_NUM_TOTAL = 86_500


def _config():
  config = demo.get_config("baseline")
  config.unlock()
  config.model.name = FLAGS.model
  config.data.image_size = FLAGS.image_size
  config.train.batch_size = FLAGS.batch_size
  return config


def _loss_config(base, name):
  c = ml_collections.ConfigDict(base.to_dict())
  c.name = name
  return c


def _loss_fn(config, name):
  return losses.get_loss_fn(_loss_config(config.loss, name), num_pos=NIH_NUM_POS, num_total=NIH_NUM_TOTAL,
                            num_steps=config.train.num_steps)


def main(argv):
  del argv
  config = _config()
  names = ["bce"] + [n for n in FLAGS.losses if n != "bce"]
  device = jax.local_devices()[0]
  mesh = model_context.make_mesh([device])
  model = model_context.create_model(config, prevalence=NIH_NUM_POS / NIH_NUM_TOTAL)
  rng = np.random.default_rng(0)
  b, s = FLAGS.batch_size, FLAGS.image_size
  labels = (rng.random((b, 14)) < NIH_NUM_POS / NIH_NUM_TOTAL).astype(np.float32)
  batch = jax.device_put({"image": rng.integers(0, 256, (b, s, s, 1), dtype=np.uint8), "labels": labels}, device)
  state0 = train.create_train_state(config, model, jax.random.key(0, impl="rbg"), s)

  steps, states, compile_s = {}, {}, {}
  for name in names:
    step, _ = train.jit_steps(mesh, _loss_fn(config, name), model)
    state = jax.tree.map(jnp.copy, state0)
    t = time.perf_counter()
    state, m = step(state, batch)  # Compile.
    m["loss"].block_until_ready()
    compile_s[name] = time.perf_counter() - t
    for _ in range(2):  # Warm-up.
      state, m = step(state, batch)
    m["loss"].block_until_ready()
    steps[name], states[name] = step, state

  times = {name: [] for name in names}
  for r in range(FLAGS.repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      state = states[name]
      t = time.perf_counter()
      for _ in range(FLAGS.steps):
        state, m = steps[name](state, batch)
      m["loss"].block_until_ready()
      times[name].append((time.perf_counter() - t) / FLAGS.steps * 1e3)
      states[name] = state

  # The loss alone: value and gradient of the mean over (batch, 14) logits.
  logits = jax.device_put(rng.normal(0, 3, (b, 14)).astype(np.float32), device)
  alone = {}
  for name in names:
    fn = _loss_fn(config, name)
    vg = jax.jit(jax.value_and_grad(lambda x, y, st: fn(x, y, st).mean()))
    jax.block_until_ready(vg(logits, batch["labels"], jnp.int32(0)))
    runs = []
    for _ in range(FLAGS.repeats):
      t = time.perf_counter()
      for _ in range(200):
        out = vg(logits, batch["labels"], jnp.int32(0))
      jax.block_until_ready(out)
      runs.append((time.perf_counter() - t) / 200 * 1e6)
    alone[name] = float(np.median(runs))

  base = float(np.median(times["bce"]))
  print(f"JAX {jax.__version__} on {device.device_kind} ({jax.default_backend()}); {FLAGS.model}, {s} px, "
        f"batch {b}; median of {FLAGS.repeats} rounds x {FLAGS.steps} steps, losses rotated each round")
  print(f"{'loss':<16}{'ms/step':>10}{'vs bce':>9}{'min':>9}{'max':>9}{'compile s':>11}{'loss alone µs':>15}")
  for name in names:
    med = float(np.median(times[name]))
    print(f"{name:<16}{med:>10.2f}{med / base:>9.3f}{min(times[name]):>9.2f}{max(times[name]):>9.2f}"
          f"{compile_s[name]:>11.1f}{alone[name]:>15.1f}")
  print("windows (ms/step): " + "; ".join(f"{n} [{', '.join(f'{t:.1f}' for t in times[n])}]" for n in names))


if __name__ == "__main__":
  app.run(main)

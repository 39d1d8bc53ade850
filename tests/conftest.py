"""Test set-up: 4 simulated CPU devices (set before JAX starts) and a tiny shared phantom dataset."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# Tests compile the same tiny steps many times over; a persistent cache compiles each once per session.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxcxr_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

from configs import demo  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = dict(num_images=400, image_size=32)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A 400-image, 32-px phantom dataset in the NIH layout, generated once per test session."""
  from jaxcxr.data import phantom  # pylint: disable=g-import-not-at-top
  d = str(tmp_path_factory.mktemp("phantom"))
  phantom.ensure(d, num_images=TINY["num_images"], image_size=TINY["image_size"], seed=0,
                 prevalence={"Hernia": 0.05}, progress=False)
  return d


def tiny_config(data_dir, arm="weighted", **train):
  """The demo config shrunk to seconds: tiny model and data, a few steps."""
  config = demo.get_config(arm)
  config.data.dir = data_dir
  config.data.image_size = TINY["image_size"]
  config.data.phantom.num_images = TINY["num_images"]
  config.data.phantom.hernia_prevalence = 0.05
  config.model.name = "resnet_tiny"
  config.train.update({**dict(batch_size=16, eval_batch_size=64, num_steps=8, eval_every=4, checkpoint_every=2,
                              log_every=2, warmup_steps=2), **train})
  return config

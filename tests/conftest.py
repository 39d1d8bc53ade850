"""Test set-up: 4 simulated CPU devices (set before JAX starts) and a tiny shared phantom dataset."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from tests.helpers import TINY  # pylint: disable=g-import-not-at-top,wrong-import-position

# Tests compile the same tiny steps many times over; a persistent cache compiles each once per session.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxcxr_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A 400-image, 32-px phantom dataset in the NIH layout, generated once per test session."""
  from jaxcxr.data import phantom  # pylint: disable=g-import-not-at-top
  d = str(tmp_path_factory.mktemp("phantom"))
  phantom.ensure(d, num_images=TINY["num_images"], image_size=TINY["image_size"], seed=0,
                 prevalence={"Hernia": TINY["hernia_prevalence"]}, progress=False)
  return d

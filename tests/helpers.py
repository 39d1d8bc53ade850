"""Shared test helpers: the tiny demo config (imported by tests; fixtures live in conftest.py)."""

from configs import demo

# Hernia at 20% of the tiny set, so that train, validation and test all hold Hernia-positive patients (19, 2
# and 6 of them; tests/test_nih.py checks it) and the target's paths run on real positives, not fallbacks.
TINY = dict(num_images=400, image_size=32, hernia_prevalence=0.2)
# The demo config shrunk to seconds: tiny model and data, a few steps (dotted field -> value).
TINY_OVERRIDES = {
    "data.image_size": TINY["image_size"], "data.phantom.num_images": TINY["num_images"],
    "data.phantom.hernia_prevalence": TINY["hernia_prevalence"], "model.name": "resnet_tiny", "train.batch_size": 16,
    "train.eval_batch_size": 64, "train.num_steps": 8, "train.eval_every": 4, "train.checkpoint_every": 2,
    "train.log_every": 2, "train.warmup_steps": 2,
}


def tiny_overrides(data_dir, **train):
  """TINY_OVERRIDES for `data_dir`, with train fields replaced by `train`."""
  return {**TINY_OVERRIDES, "data.dir": data_dir, **{f"train.{k}": v for k, v in train.items()}}


def tiny_config(data_dir, arm="weighted", **train):
  """The demo config (arm `arm`) with tiny_overrides(data_dir, **train) applied."""
  config = demo.get_config(arm)
  for field, value in tiny_overrides(data_dir, **train).items():
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def assert_written_back_head_matches(combined, report):
  """A head stage's written-back checkpoint scored on images (`combined`, jaxcxr.evaluate) gives the
  embedding-level `report`'s AUROC and AUPRC to 1e-4, and the head is the new one, not the backbone's."""
  import pytest  # pylint: disable=g-import-not-at-top
  from jaxcxr.data import nih  # pylint: disable=g-import-not-at-top
  assert combined["checkpoint_step"] == report["checkpoint_step"]
  defined = 0
  for name in nih.CLASSES:
    ours, theirs = combined["classes"][name], report["classes"][name]
    for key in ("auroc", "auprc"):
      assert (ours[key] is None) == (theirs[key] is None), (name, key)
      if ours[key] is not None:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), (name, key)
        defined += 1
  assert defined > 10
  assert any(report["classes"][n]["auroc"] is not None
             and abs(report["classes"][n]["auroc"] - report["backbone"]["classes"][n]["auroc"]) > 1e-3
             for n in nih.CLASSES)

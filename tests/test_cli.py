"""The command line: configs and their arms, locked overrides, and the missing-data message."""

import os
import subprocess
import sys

import pytest

from configs import base, demo, hernia, pneumothorax
from jaxcxr import arms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", [hernia, pneumothorax, demo])
@pytest.mark.parametrize("arm", arms.ARMS)
def test_every_arm_loads_with_its_loss(module, arm):
  config = module.get_config(arm)
  assert config.arm == arm
  expected = {  # arm: (backbone loss, sampling plan, training augments, augmentation label-dependent, SMOTE)
      "baseline": ("bce", "none", False, False, "none"), "weighted": ("weighted_bce", "none", False, False, "none"),
      "focal": ("focal", "none", False, False, "none"),
      "sample_only": ("bce", "target_ratio", False, False, "none"),
      "augment_only": ("bce", "none", True, False, "none"),
      "oversample": ("bce", "target_ratio", True, False, "none"),
      "oversample_labelaug": ("bce", "target_ratio", True, True, "none"),
      "hybrid": ("focal", "target_ratio", True, False, "none"), "smote": ("bce", "none", False, False, "smote"),
      "smote_hybrid": ("bce", "none", False, False, "smote"), "mlsmote": ("bce", "none", False, False, "mlsmote"),
      "crt": ("bce", "none", False, False, "none"), "asl": ("asl", "none", False, False, "none"),
      "ldam_drw": ("ldam", "none", False, False, "none"),
      "logit_adjusted": ("logit_adjusted", "none", False, False, "none")}[arm]
  assert (config.loss.name, config.data.sampling.name, config.data.augment.enabled,
          config.data.augment.label_dependent, config.smote.method) == expected
  oversample = module.get_config("oversample")
  if config.data.sampling.name != "none":  # The ablations and variants share oversample's sampling exactly.
    assert config.data.sampling == oversample.data.sampling
  if config.data.augment.enabled and not config.data.augment.label_dependent:  # ... and its augmentation.
    assert config.data.augment == oversample.data.augment
  if arm == "oversample_labelaug":  # Target images augmented more often and more strongly than the others.
    a = config.data.augment
    assert a.minority_probability > a.probability and a.minority_strength > a.strength
  if arm == "smote_hybrid":  # Augmented views of the target's images, then a focal head.
    assert config.smote.views > 0 and config.smote.loss == "focal"
  if arm == "asl":  # The CXR-LT 2023 winner's settings.
    assert (config.loss.gamma_neg, config.loss.gamma_pos, config.loss.clip) == (4.0, 1.0, 0.05)
  if arm == "ldam_drw":  # Margins with deferred re-weighting that does switch on during training.
    assert config.loss.max_margin > 0 and 0 < config.loss.drw_start < 1
  if arm == "logit_adjusted":  # The adjustment adds the prior, so the head bias starts at zero.
    assert config.loss.tau > 0 and config.model.head_bias == "zero"
  else:
    assert config.model.head_bias == "prior"
  with pytest.raises(AttributeError):
    config.train.learnig_rate = 1.0  # Locked: a misspelt field is an error.


def test_configs_target_the_documented_data():
  assert hernia.get_config().data.target == "Hernia" and hernia.get_config().data.source == "nih"
  assert pneumothorax.get_config().data.target == "Pneumothorax"
  assert demo.get_config().data.source == "phantom"
  for field in ("seed", "data.source", "data.dir", "data.image_size", "data.split", "data.split_seed",
                "data.augment.label_dependent", "data.target", "model.name",
                "loss.name", "train.batch_size", "train.num_steps", "train.eval_every", "train.checkpoint_every",
                "train.learning_rate"):
    node = base.get_config()
    for part in field.split("."):
      node = node[part]


def test_unknown_arm_is_an_error():
  with pytest.raises(ValueError, match="baseline"):
    hernia.get_config("smote_typo")


def _run(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(tmp_path))
  return subprocess.run([sys.executable, "-m", "jaxcxr.main", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def test_missing_nih_data_is_one_clear_message(tmp_path):
  missing = tmp_path / "nowhere"
  proc = _run(["--config=configs/hernia.py", f"--config.data.dir={missing}", f"--workdir={tmp_path / 'w'}"],
              tmp_path)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert str(missing) in proc.stderr
  assert "nihcc.app.box.com" in proc.stderr and "configs/demo.py" in proc.stderr


def test_misspelt_override_fails_loudly(tmp_path):
  proc = _run(["--config=configs/demo.py", "--config.train.num_stepz=3", f"--workdir={tmp_path / 'w'}"], tmp_path)
  assert proc.returncode != 0
  assert "num_stepz" in proc.stderr

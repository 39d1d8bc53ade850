"""config_check: every field of configs/base.py has a rule, shipped configs pass, bad values are one line."""

import json

import ml_collections
import pytest

from configs import base
from configs import bench_resnet50
from configs import chexnet
from configs import demo
from configs import hernia
from configs import pneumothorax
from jaxcxr import arms
from jaxcxr import config_check
from jaxcxr import errors
from jaxcxr import model_context
from jaxcxr import train

# Values of every type and well outside every range: each field must reject at least one of them.
ABSURD = (-1, -0.5, 1.5, 10**9, float("nan"), "nosuch", None, True)


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def _with(config, path, value):
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)  # Any type may be set.
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  return config


def test_every_field_of_base_has_a_rule():
  assert set(_leaves(base.get_config())) == set(config_check._rules())  # pylint: disable=protected-access


@pytest.mark.parametrize("config", [m.get_config() for m in (base, demo, hernia, pneumothorax, chexnet,
                                                              bench_resnet50)]
                         + [demo.get_config(a) for a in arms.ARMS] + [demo.get_config("quick")])
def test_shipped_configs_pass(config):
  config_check.check(config, num_devices=4)
  # ... and so does the same config read back from the config.json a run writes.
  config_check.check(ml_collections.ConfigDict(json.loads(config.to_json())), num_devices=4)


@pytest.mark.parametrize("path", sorted(config_check._rules()))  # pylint: disable=protected-access
def test_every_field_rejects_bad_values_in_one_line(path):
  rejected = 0
  for value in ABSURD:
    config = _with(demo.get_config(), path, value)
    stored = config
    for key in path.split("."):
      stored = stored[key]  # ConfigDict may have cast it (True -> 1.0 in a float field).
    try:
      config_check.check(config)
    except errors.ConfigError as e:
      rejected += 1
      message = str(e)
      assert "\n" not in message and f"config.{path}={stored!r} is not allowed: use " in message
  assert rejected >= 1, f"{path} accepted all of {ABSURD}"


def test_messages_name_what_is_allowed():
  cases = {
      ("loss.name", "focall"): "config.loss.name='focall' is not allowed: use one of 'bce', 'weighted_bce', "
                               "'focal', 'class_balanced', 'asl', 'ldam', 'logit_adjusted'.",
      ("train.batch_size", -4): "config.train.batch_size=-4 is not allowed: use an integer >= 1.",
      ("data.sampling.ratio", 1.5): "config.data.sampling.ratio=1.5 is not allowed: use a number in (0, 1).",
      ("train.learning_rate", 0.0): "config.train.learning_rate=0.0 is not allowed: use a number > 0.",
      ("data.image_size", 16): "config.data.image_size=16 is not allowed: use an integer >= 28.",
  }
  for (path, value), message in cases.items():
    with pytest.raises(errors.ConfigError) as e:
      config_check.check(_with(demo.get_config(), path, value))
    assert str(e.value) == message


def test_image_size_floor_depends_on_the_model():
  # ChestMNIST's native 28 px works for a ResNet (last stage 1x1) and is refused for a DenseNet, whose
  # 'VALID' transition pools would leave an empty map.
  config = _with(demo.get_config(), "data.image_size", 28)
  config_check.check(config)
  with pytest.raises(errors.ConfigError) as e:
    config_check.check(_with(config, "model.name", "densenet121"))
  assert str(e.value).startswith("config.data.image_size=28 is not allowed: use an integer >= 29 with "
                                 "model.name='densenet121'")
  config_check.check(_with(_with(config, "model.name", "densenet121"), "data.image_size", 29))


def test_ranges_include_their_ends_where_documented():
  ok = {"data.augment.probability": (0.0, 1.0), "loss.alpha": (-1.0, 0.0, 1.0), "train.eval_batch_size": (0,),
        "smote.checkpoint": ("best", "latest", "300", 300), "data.sampling.undersample_no_finding": (1.0,),
        "train.warmup_steps": (0,), "smote.loss": ("", "focal"), "loss.beta": (0.0, 0.9999)}
  for path, values in ok.items():
    for value in values:
      config_check.check(_with(demo.get_config(), path, value))
  for path, value in {"loss.alpha": -0.5, "loss.beta": 1.0, "smote.checkpoint": "newest",
                      "data.sampling.undersample_no_finding": 0.0, "train.target_recall": 0.0}.items():
    with pytest.raises(errors.ConfigError):
      config_check.check(_with(demo.get_config(), path, value))


def test_batch_sizes_divide_by_the_devices():
  config = _with(demo.get_config(), "train.batch_size", 30)
  config_check.check(config)  # No device count: not checked.
  with pytest.raises(errors.ConfigError, match=r"train.batch_size=30 .* a multiple of the 4 devices"):
    config_check.check(config, num_devices=4)
  config = _with(demo.get_config(), "train.eval_batch_size", 0)  # 0 = batch_size.
  config_check.check(config, num_devices=4)
  with pytest.raises(errors.ConfigError, match="train.eval_batch_size=6"):
    config_check.check(_with(config, "train.eval_batch_size", 6), num_devices=4)


def test_chestmnist_split_goes_with_its_source():
  config = _with(_with(demo.get_config(), "data.source", "chestmnist"), "data.split", "chestmnist")
  config_check.check(config)
  with pytest.raises(errors.ConfigError, match="data.split='random'"):
    config_check.check(_with(config, "data.split", "random"))
  with pytest.raises(errors.ConfigError, match="data.split='chestmnist'"):
    config_check.check(_with(demo.get_config(), "data.split", "chestmnist"))


def test_missing_blocks_are_skipped():
  """A config.json from an older run may lack a block; what is there is still checked."""
  config = demo.get_config().to_dict()
  del config["smote"]
  config_check.check(ml_collections.ConfigDict(config))
  config["train"]["num_steps"] = 0
  with pytest.raises(errors.ConfigError, match="train.num_steps=0"):
    config_check.check(ml_collections.ConfigDict(config))


def test_sets_owned_by_train_match_it():
  assert set(config_check.PARALLEL_MODES) == set(train.PARALLEL_MODES) == set(model_context.PARALLEL_MODES)
  for name in config_check.DTYPES:
    model_context.compute_dtype(name)
  with pytest.raises(KeyError):
    model_context.compute_dtype("float16")


def test_unknown_arm_token_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="Unknown token 'nosucharm'"):
    demo.get_config("nosucharm")
  with pytest.raises(ValueError):  # Still a ValueError for callers that catch that.
    hernia.get_config("focal,baseline")

"""Checks every field of a config for type and range before a command does any work.

  config_check.check(config)                       # every command, first thing
  config_check.check(config, num_devices=8)        # also: batch sizes divide by the device count

A bad value raises `errors.ConfigError` with one line naming the field, the value and what is allowed, so
`--config.train.batch_size=-4` stops in a second instead of after the data is generated, prepared or read.
The sets of names come from the modules that own them (losses, models, sampling, smote, metrics, nih).
Only fields present are checked: a config.json written by an older version may lack a block.

Only the commands import this module (it imports the layers below them, never the reverse).
"""

import numbers

import ml_collections

from jaxcxr import errors
from jaxcxr.data import nih
from jaxcxr.data import sampling

# Sets owned by train.py, which names them in code rather than constants (tests/test_config_check.py
# checks PARALLEL_MODES against train.PARALLEL_MODES).
DTYPES = ("auto", "float32", "bfloat16")
HEAD_BIAS = ("prior", "zero")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("warmup_cosine", "plateau")
PARALLEL_MODES = ("jit", "shard_map")
# Data sources (jaxcxr/data/datasets.py) and the splits each allows.
SOURCES = ("phantom", "nih", "chestmnist")
CHESTMNIST_SPLIT = "chestmnist"
# Smallest data.image_size: ChestMNIST's native 28 px. Every network halves the image five times (stem
# conv, max pool, three strided stages or DenseNet transitions); a ResNet's 'SAME' strides leave 28 px a
# 1x1 last-stage map of real pixels (28, 14, 7, 4, 2, 1), but DenseNet's 2x2 'VALID' transition pools
# floor it to an empty map (28, 14, 7, 3, 1, 0: NaN logits); from 29 px (29, 15, 8, 4, 2, 1) they work.
MIN_IMAGE_SIZE = 28
MIN_DENSENET_IMAGE_SIZE = 29


class _Rule:
  """One field's rule: `problem(value)` returns None when the value is allowed, else what is allowed."""

  def __init__(self, allowed, test):
    self.allowed, self._test = allowed, test

  def problem(self, value):
    return None if self._test(value) else self.allowed


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v  # v == v: not NaN.


def _bracket(lo, hi, lo_open, hi_open):
  return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def integer(minimum):
  return _Rule(f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum)


def number(lo=None, hi=None, *, lo_open=False, hi_open=False):
  """A real number in the interval (open ends as given); None: unbounded on that side."""
  def test(v):
    if not _is_real(v):
      return False
    if lo is not None and (v <= lo if lo_open else v < lo):
      return False
    return hi is None or (v < hi if hi_open else v <= hi)
  if hi is None:
    allowed = f"a number {'>' if lo_open else '>='} {lo:g}"
  else:
    allowed = f"a number in {_bracket(lo, hi, lo_open, hi_open)}"
  return _Rule(allowed, test)


def one_of(names):
  names = tuple(names)
  return _Rule("one of " + ", ".join(repr(n) for n in names), lambda v: isinstance(v, str) and v in names)


def boolean():
  return _Rule("True or False", lambda v: isinstance(v, bool))


def string():
  return _Rule("a string", lambda v: isinstance(v, str))


def _checkpoint(v):
  if _is_int(v):
    return v >= 0
  return isinstance(v, str) and (v in ("best", "latest") or v.isdigit())


def _rules():
  """Field path -> rule, for every field of configs/base.py (tests check the two lists match)."""
  from jaxcxr import losses  # pylint: disable=g-import-not-at-top  (imports JAX: only when checking)
  from jaxcxr import metrics  # pylint: disable=g-import-not-at-top
  from jaxcxr import models  # pylint: disable=g-import-not-at-top
  from jaxcxr import heads  # pylint: disable=g-import-not-at-top
  from jaxcxr import resampling  # pylint: disable=g-import-not-at-top
  from jaxcxr import runfolder  # pylint: disable=g-import-not-at-top
  fraction = number(0.0, 1.0)  # [0, 1]
  return {
      "seed": integer(0),
      "arm": string(),  # A label for reports: an arm of jaxcxr/arms.py or a recipe name (chexnet.py).
      "data.source": one_of(SOURCES),
      "data.dir": string(),
      "data.image_size": integer(MIN_IMAGE_SIZE),
      "data.split": one_of(nih.SPLITS + (CHESTMNIST_SPLIT,)),
      "data.val_fraction": number(0.0, 1.0, lo_open=True, hi_open=True),
      "data.split_seed": integer(0),
      "data.target": one_of(nih.CLASSES),
      "data.label_file": string(),
      "data.strict": boolean(),
      "data.num_workers": integer(0),
      "data.phantom.num_images": integer(1),
      "data.phantom.hernia_prevalence": number(0.0, 1.0, hi_open=True),
      "data.phantom.label_noise": number(0.0, 4.0),  # A scale of the per-finding rates, as the phantom CLI takes it.
      "data.phantom.seed": integer(0),
      "data.sampling.name": one_of(sampling.NAMES),
      "data.sampling.threshold": number(0.0, 1.0, lo_open=True),
      "data.sampling.ratio": number(0.0, 1.0, lo_open=True, hi_open=True),
      "data.sampling.cap": integer(1),
      "data.sampling.undersample_no_finding": number(0.0, 1.0, lo_open=True),
      "data.augment.enabled": boolean(),
      "data.augment.label_dependent": boolean(),
      "data.augment.probability": fraction,
      "data.augment.minority_probability": fraction,
      "data.augment.strength": number(0.0),
      "data.augment.minority_strength": number(0.0),
      "data.augment.rotation": number(0.0, 180.0),
      "data.augment.scale": number(0.0, 1.0, hi_open=True),
      "data.augment.translate": number(0.0, 1.0, hi_open=True),
      "data.augment.shear": number(0.0, 90.0, hi_open=True),
      "data.augment.brightness": fraction,
      "data.augment.contrast": number(0.0, 1.0, hi_open=True),
      "data.augment.gamma": number(0.0),
      "data.augment.noise": fraction,
      "data.augment.hflip": fraction,
      "model.name": one_of(sorted(models.MODELS)),
      "model.dtype": one_of(DTYPES),
      "model.head_bias": one_of(HEAD_BIAS),
      "model.init_from": string(),
      "loss.name": one_of(losses.LOSS_NAMES),
      "loss.pos_weight": one_of(losses.POS_WEIGHT_METHODS),
      "loss.pos_weight_max": number(0.0),
      "loss.alpha": _Rule("-1 (off) or a number in [0, 1]", lambda v: _is_real(v) and (v == -1 or 0 <= v <= 1)),
      "loss.gamma": number(0.0),
      "loss.beta": number(0.0, 1.0, hi_open=True),
      "loss.gamma_pos": number(0.0),
      "loss.gamma_neg": number(0.0),
      "loss.clip": number(0.0, 1.0, hi_open=True),
      "loss.max_margin": number(0.0, lo_open=True),
      "loss.scale": number(0.0, lo_open=True),
      "loss.drw_start": fraction,
      "loss.tau": number(0.0),
      "train.batch_size": integer(1),
      "train.eval_batch_size": integer(0),
      "train.num_steps": integer(1),
      "train.eval_every": integer(1),
      "train.checkpoint_every": integer(1),
      "train.log_every": integer(1),
      "train.keep_checkpoints": integer(1),
      "train.optimizer": one_of(OPTIMIZERS),
      "train.b1": number(0.0, 1.0, hi_open=True),
      "train.b2": number(0.0, 1.0, hi_open=True),
      "train.schedule": one_of(SCHEDULES),
      "train.plateau_factor": number(0.0, 1.0, lo_open=True),
      "train.plateau_patience": integer(1),
      "train.plateau_rtol": number(0.0),
      "train.plateau_min_scale": fraction,
      "train.learning_rate": number(0.0, lo_open=True),
      "train.warmup_steps": integer(0),
      "train.weight_decay": number(0.0),
      "train.threshold_rule": one_of(metrics.THRESHOLD_RULES),
      "train.target_recall": number(0.0, 1.0, lo_open=True),
      "train.compilation_cache": string(),
      "train.rank_by": one_of(tuple(runfolder.RANK_METRICS)),
      "train.accept_config_change": boolean(),
      "parallel.mode": one_of(PARALLEL_MODES),
      "smote.method": one_of(resampling.METHODS),
      "smote.k_neighbors": integer(1),
      "smote.ratio": number(0.0, lo_open=True),
      "smote.head": one_of(heads.HEADS),
      "smote.hidden": integer(1),
      "smote.loss": one_of(("",) + tuple(losses.LOSS_NAMES)),
      "smote.steps": integer(1),
      "smote.learning_rate": number(0.0, lo_open=True),
      "smote.batch_size": integer(1),
      "smote.weight_decay": number(0.0),
      "smote.views": integer(0),
      "smote.checkpoint": _Rule("'best', 'latest' or a step number", _checkpoint),
      "crt.enabled": boolean(),
      "crt.loss": one_of(("",) + tuple(losses.LOSS_NAMES)),
      "crt.head": one_of(("linear",)),
      "crt.steps": integer(1),
      "crt.learning_rate": number(0.0, lo_open=True),
      "crt.batch_size": integer(1),
      "crt.weight_decay": number(0.0),
      "crt.checkpoint": _Rule("'best', 'latest' or a step number", _checkpoint),
  }


_MISSING = object()


def _get(config, path):
  node = config
  for key in path.split("."):
    if not hasattr(node, "keys") or key not in node:
      return _MISSING
    node = node[key]
  return node


def _fail(path, value, allowed):
  raise errors.ConfigError(f"config.{path}={value!r} is not allowed: use {allowed}.")


def _loaded(config):
  """ml_collections defers a config file's load error (a wrong path) until first use: raise it here."""
  if isinstance(config, ml_collections.ConfigDict):
    return config
  if config is None:
    raise errors.ConfigError("No config: pass --config=FILE (e.g. configs/demo.py).")
  try:
    config.keys()
  except OSError as e:  # The path or its module could not be loaded; the last line says why.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raise errors.ConfigError(f"--config: cannot load the config file: {lines[-1] if lines else repr(e)}") from None
  raise errors.ConfigError(f"--config gave a {type(config).__name__}, not a ConfigDict.")


def check(config, *, num_devices=None):
  """Raises errors.ConfigError on the first field of `config` whose value cannot work.

  Args:
    config: the ml_collections ConfigDict a command runs with (any config built on configs/base.py).
    num_devices: the global device count, when known: batch sizes must divide by it.
  """
  config = _loaded(config)
  for path, rule in _rules().items():
    value = _get(config, path)
    if value is _MISSING:
      continue
    allowed = rule.problem(value)
    if allowed is not None:
      _fail(path, value, allowed)
  _check_combinations(config)
  if num_devices is not None:
    for path in ("train.batch_size", "train.eval_batch_size"):
      value = _get(config, path)
      if _is_int(value) and value % num_devices:
        _fail(path, value, f"a multiple of the {num_devices} devices" + (" (or 0)" if "eval" in path else ""))


def _check_combinations(config):
  """Rules that involve two fields."""
  source, split = _get(config, "data.source"), _get(config, "data.split")
  if source == "chestmnist" and split not in (_MISSING, CHESTMNIST_SPLIT):
    _fail("data.split", split, f"'{CHESTMNIST_SPLIT}' with data.source='chestmnist' (the file's own splits)")
  if split == CHESTMNIST_SPLIT and source not in (_MISSING, "chestmnist"):
    _fail("data.split", split, f"one of {', '.join(repr(s) for s in nih.SPLITS)} with data.source={source!r}")
  model, size = _get(config, "model.name"), _get(config, "data.image_size")
  if isinstance(model, str) and model.startswith("densenet") and _is_int(size) and size < MIN_DENSENET_IMAGE_SIZE:
    _fail("data.image_size", size, f"an integer >= {MIN_DENSENET_IMAGE_SIZE} with model.name={model!r} (below "
          "that its transition pools leave an empty map; the ResNets take 28 px)")

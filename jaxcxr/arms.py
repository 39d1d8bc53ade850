"""Arms of the imbalance study, picked by the config string: `configs/hernia.py:focal`.

Each arm changes only how imbalance is handled; everything else comes from the config that applies it.

  baseline             plain BCE, no rebalancing
  weighted             cost-sensitive BCE (positives weighted by sqrt(n_neg / n_pos))
  focal                focal loss, gamma 2
  sample_only          target_ratio oversampling, no augmentation, BCE     } ablations: which half of
  augment_only         label-blind augmentation, no oversampling, BCE      } `oversample` does the work
  oversample           target_ratio oversampling + label-blind augmentation, BCE
  oversample_labelaug  `oversample` with label-dependent augmentation (target images augmented more often
                       and more strongly): measures the shortcut that opt-in creates (jaxcxr/data/augment.py)
  hybrid               `oversample` with focal loss
  smote                BCE backbone, then SMOTE on its training embeddings and a new BCE head
  smote_hybrid         BCE backbone; augmented target views, SMOTE, then a focal head
  mlsmote              BCE backbone, then multi-label SMOTE (MLSMOTE) on its embeddings and a new BCE head
  crt                  BCE backbone, then decoupled classifier re-training: a fresh linear head on the frozen
                       backbone's embeddings with class-balanced sampling
  asl                  asymmetric loss (gamma- 4, gamma+ 1, clip 0.05: the CXR-LT 2023 winner's)
  ldam_drw             LDAM margins with deferred class-balanced re-weighting from 80% of training on
  logit_adjusted       BCE on logits + log prior odds (prediction uses the raw logits)

Augmentation is label-blind in every arm but `oversample_labelaug`: one distribution for all training
images, so the minority is preferred only through sampling (each repeat of a rare image draws its own
augmentation).

The config string (after the colon) is a comma-separated list of tokens: at most one arm name plus the
config's modifiers, in any order, e.g. `configs/demo.py:quick,focal`; see `parse_config_string`.
"""

from jaxcxr import errors

ARMS = ("baseline", "weighted", "focal", "sample_only", "augment_only", "oversample", "oversample_labelaug",
        "hybrid", "smote", "smote_hybrid", "mlsmote", "crt", "asl", "ldam_drw", "logit_adjusted")


def _oversample(config):
  """target_ratio oversampling: a quarter of every epoch carries data.target, no image over 50 times."""
  config.data.sampling.name = "target_ratio"
  config.data.sampling.ratio = 0.25
  config.data.sampling.cap = 50


def apply_arm(config, arm):
  """Sets the loss, sampling and augmentation of `arm` on `config`, then locks it."""
  if arm == "baseline":  # Plain BCE, no rebalancing of any kind.
    config.loss.name = "bce"
  elif arm == "weighted":  # Cost-sensitive BCE: positives weighted by sqrt(n_neg / n_pos).
    config.loss.name = "weighted_bce"
    config.loss.pos_weight = "sqrt_inverse"
  elif arm == "focal":  # Focal loss (Lin et al. 2017), gamma 2, no alpha.
    config.loss.name = "focal"
    config.loss.gamma = 2.0
    config.loss.alpha = -1.0
  elif arm == "sample_only":  # Ablation: the oversample arm's sampling alone, images as stored.
    _oversample(config)
    config.data.augment.enabled = False
    config.loss.name = "bce"
  elif arm == "augment_only":  # Ablation: the oversample arm's (label-blind) augmentation alone.
    config.data.augment.enabled = True
    config.data.augment.label_dependent = False
    config.loss.name = "bce"
  elif arm in ("oversample", "hybrid"):  # Data-level: oversampling + label-blind augmentation.
    _oversample(config)
    config.data.augment.enabled = True
    config.data.augment.label_dependent = False
    if arm == "oversample":  # ... with plain BCE.
      config.loss.name = "bce"
    else:  # 'hybrid': ... with focal loss, gamma 2, no alpha.
      config.loss.name = "focal"
      config.loss.gamma = 2.0
      config.loss.alpha = -1.0
  elif arm == "oversample_labelaug":  # `oversample`, but target images augmented more often and harder.
    _oversample(config)
    config.data.augment.enabled = True
    config.data.augment.label_dependent = True
    config.data.augment.probability, config.data.augment.strength = 0.5, 0.5  # Non-target images.
    config.data.augment.minority_probability, config.data.augment.minority_strength = 0.9, 1.0
    config.loss.name = "bce"
  elif arm == "smote":  # Plain-BCE backbone, then SMOTE on its training embeddings and a new BCE head.
    config.loss.name = "bce"
    config.smote.method = "smote"
  elif arm == "smote_hybrid":  # Plain-BCE backbone; augmented target views, SMOTE, then a focal head.
    config.loss.name = "bce"
    config.smote.method = "smote"
    config.smote.views = 4
    config.smote.loss = "focal"
  elif arm == "crt":  # Plain-BCE backbone, then decoupled classifier re-training with class-balanced sampling.
    config.loss.name = "bce"
    config.crt.enabled = True
  elif arm == "asl":  # Asymmetric loss (Ridnik et al. 2021) with the CXR-LT 2023 winner's gamma-, gamma+, clip.
    config.loss.name = "asl"
    config.loss.gamma_neg = 4.0
    config.loss.gamma_pos = 1.0
    config.loss.clip = 0.05
  elif arm == "ldam_drw":  # LDAM margins (rarest class 0.5), class-balanced weights from 80% of training on.
    config.loss.name = "ldam"
    config.loss.max_margin = 0.5
    config.loss.scale = 1.0
    config.loss.drw_start = 0.8
  elif arm == "logit_adjusted":  # BCE on logits + log prior odds (Menon et al. 2021); raw logits predict.
    config.loss.name = "logit_adjusted"
    config.loss.tau = 1.0
    config.model.head_bias = "zero"  # The adjustment already adds the prior; a prior bias would double it.
  elif arm == "mlsmote":  # Plain-BCE backbone, then MLSMOTE (multi-label) on its embeddings and a new head.
    config.loss.name = "bce"
    config.smote.method = "mlsmote"
  else:
    raise errors.ConfigError(f"Unknown arm {arm!r}; choose one of {', '.join(ARMS)}.")
  config.arm = arm
  config.lock()
  return config


def config_tokens(arg):
  """The comma-separated tokens of a config string ('' or None: none), stripped, empty ones dropped."""
  return [t.strip() for t in (arg or "").split(",") if t.strip()]


def parse_config_string(arg, *, default_arm=None, modifiers=()):
  """Splits a config string such as 'quick,focal' into (arm, modifiers).

  Args:
    arg: the string after the colon of `--config=configs/demo.py:quick,focal` ('' or None: no tokens).
    default_arm: the arm when the string names none (None: return None).
    modifiers: the modifier tokens this config accepts (e.g. ('quick',) for demo.py).

  Returns:
    (arm, frozenset of the modifiers given).

  Raises:
    errors.ConfigError (a ValueError): an unknown token or two arms; the message lists the valid tokens.
  """
  arm, given = None, set()
  for token in config_tokens(arg):
    if token in ARMS:
      if arm is not None:
        raise errors.ConfigError(f"Config string {arg!r} names two arms ({arm!r} and {token!r}); give at most one.")
      arm = token
    elif token in modifiers:
      given.add(token)
    else:
      valid = f"arms {', '.join(ARMS)}" + (f"; modifiers {', '.join(modifiers)}" if modifiers else "")
      raise errors.ConfigError(f"Unknown token {token!r} in config string {arg!r}; valid tokens: {valid} "
                               "(comma-separated, at most one arm).")
  return (arm or default_arm), frozenset(given)

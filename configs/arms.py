"""Arms of the imbalance study, picked by the config string: `configs/hernia.py:focal`.

Each arm changes only how imbalance is handled; everything else comes from the config that applies it.
"""

ARMS = ("baseline", "weighted", "focal", "oversample", "hybrid")


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
  elif arm in ("oversample", "hybrid"):  # Data-level: target_ratio oversampling + augmentation.
    config.data.sampling.name = "target_ratio"
    config.data.sampling.ratio = 0.25  # A quarter of every epoch carries data.target.
    config.data.sampling.cap = 50
    config.data.augment.enabled = True
    if arm == "oversample":  # ... with plain BCE.
      config.loss.name = "bce"
    else:  # 'hybrid': ... with focal loss, gamma 2, no alpha.
      config.loss.name = "focal"
      config.loss.gamma = 2.0
      config.loss.alpha = -1.0
  else:
    raise ValueError(f"Unknown arm {arm!r}; choose one of {', '.join(ARMS)}.")
  config.arm = arm
  config.lock()
  return config

"""Arms of the imbalance study, picked by the config string: `configs/hernia.py:focal`.

Each arm changes only how imbalance is handled; everything else comes from the config that applies it.
"""

ARMS = ("baseline", "weighted", "focal", "smote", "smote_hybrid")


def apply_arm(config, arm):
  """Sets the loss (and later the sampling) of `arm` on `config`, then locks it."""
  if arm == "baseline":  # Plain BCE, no rebalancing of any kind.
    config.loss.name = "bce"
  elif arm == "weighted":  # Cost-sensitive BCE: positives weighted by sqrt(n_neg / n_pos).
    config.loss.name = "weighted_bce"
    config.loss.pos_weight = "sqrt_inverse"
  elif arm == "focal":  # Focal loss (Lin et al. 2017), gamma 2, no alpha.
    config.loss.name = "focal"
    config.loss.gamma = 2.0
    config.loss.alpha = -1.0
  elif arm == "smote":  # Plain-BCE backbone, then SMOTE on its training embeddings and a new BCE head.
    config.loss.name = "bce"
    config.smote.method = "smote"
  elif arm == "smote_hybrid":  # Plain-BCE backbone; augmented target views, SMOTE, then a focal head.
    config.loss.name = "bce"
    config.smote.method = "smote"
    config.smote.views = 4
    config.smote.loss = "focal"
  else:
    raise ValueError(f"Unknown arm {arm!r}; choose one of {', '.join(ARMS)}.")
  config.arm = arm
  config.lock()
  return config

"""Hernia (0.2% of NIH images) on the real ChestX-ray14 data.

  python -m jaxcxr.main --config=configs/hernia.py --config.data.dir=/data/chestxray14 --workdir=/tmp/hernia
  python -m jaxcxr.main --config=configs/hernia.py:focal --workdir=/tmp/hernia_focal

Arms (after the colon): baseline (plain BCE, no rebalancing), weighted (cost-sensitive BCE; the default),
focal (focal loss), oversample (Hernia makes up a quarter of every epoch + label-blind augmentation, BCE),
hybrid (the same + focal loss), the ablations sample_only and augment_only, oversample_labelaug (label-dependent
augmentation), smote, smote_hybrid, mlsmote (feature-space resampling and a new head after training), crt
(decoupled classifier re-training), asl, ldam_drw, logit_adjusted (long-tail losses): see jaxcxr/arms.py.
"""

from configs import base
from jaxcxr import arms


def get_config(arg="weighted"):
  arm, _ = arms.parse_config_string(arg, default_arm="weighted")
  config = base.get_config()
  config.data.source = "nih"
  config.data.target = "Hernia"
  config.data.image_size = 224
  config.model.name = "resnet50"
  return arms.apply_arm(config, arm)

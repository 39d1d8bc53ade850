"""Pneumothorax (4.7% of NIH images) on the real ChestX-ray14 data.

  python -m jaxcxr.main --config=configs/pneumothorax.py --config.data.dir=/data/chestxray14 --workdir=/tmp/ptx

Arms (after the colon): baseline (plain BCE), weighted (cost-sensitive BCE; the default), focal, oversample
(Pneumothorax makes up a quarter of every epoch + label-blind augmentation, BCE), hybrid (the same + focal
loss), and the others of jaxcxr/arms.py (ablations, SMOTE and MLSMOTE heads, cRT, asl, ldam_drw, logit_adjusted).
"""

from configs import base
from jaxcxr import arms


def get_config(arg="weighted"):
  arm, _ = arms.parse_config_string(arg, default_arm="weighted")
  config = base.get_config()
  config.data.source = "nih"
  config.data.target = "Pneumothorax"
  config.data.image_size = 224
  config.model.name = "resnet50"
  return arms.apply_arm(config, arm)

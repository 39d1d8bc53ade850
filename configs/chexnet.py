"""CheXNet's published recipe (Rajpurkar et al. 2017) on NIH ChestX-ray14, on its own architecture.

  python -m jaxcxr.main --config=configs/chexnet.py --config.data.dir=/data/chestxray14 \
      --config.model.init_from=~/weights/densenet121.safetensors --workdir=/tmp/chexnet

DenseNet-121 from ImageNet weights (a local safetensors file, see README 'Starting from ImageNet weights';
--config.model.init_from='' trains from scratch), 224-px images, all 14 labels with one sigmoid each,
a random patient-level 70/10/20 split (as CheXNet's), batch 16, Adam (beta 0.9/0.999) at 1e-3 divided by
10 each time the validation loss stops improving after an epoch, and plain, unweighted binary
cross-entropy over the 14 labels. CheXNet's test AUROC on its own random split: Hernia 0.916, Pneumothorax
0.889, mean 0.841.

The loss as the paper states it (arXiv:1711.05225v3): the weighted binary cross-entropy of its section 2.1
(positives weighted by |N| / (|P| + |N|), negatives by |P| / (|P| + |N|)) belongs to the binary pneumonia
model; for the 14-class extension (section 5, 'CheXNet vs. Previous State of the Art on the ChestX-ray14
Dataset') the loss was changed to "the sum of unweighted binary cross entropy losses" over the 14 classes.
jaxcxr's step averages the 14 per-class losses instead of summing them: a constant factor of 1/14, to
which Adam's updates are invariant (up to its epsilon). For the paper's pneumonia-style weighting, set
--config.loss.name=weighted_bce --config.loss.pos_weight=inverse --config.loss.pos_weight_max=0.

Differences that remain: CheXNet also flipped images horizontally at random (jaxcxr keeps laterality by
default), normalised with ImageNet's per-channel statistics (jaxcxr uses one grey mean/std for its
one-channel stem, into which the RGB kernels are summed), and picked its model by validation loss (jaxcxr
keeps the best by the target's validation AUPRC, and reports every class).
"""

from configs import base
from jaxcxr import arms
from jaxcxr import errors

# One recipe: get_config takes no arm, and jaxcxr.study refuses this config rather than run it once per arm.
TAKES_ARMS = False

# The random split's training part holds about 78,500 images (70% of 112,120): one epoch at batch 16.
STEPS_PER_EPOCH = 4_900


def get_config(arg=None):
  if arms.config_tokens(arg):  # One recipe: an arm given here would otherwise be silently ignored.
    raise errors.ConfigError(f"configs/chexnet.py is one fixed recipe and takes no config string (got {arg!r}); "
                             "change fields with --config.FIELD=VALUE, or use configs/hernia.py:ARM for the arms.")
  config = base.get_config()
  config.arm = "chexnet"
  config.data.source = "nih"
  config.data.split = "random"
  config.data.image_size = 224
  config.data.target = "Hernia"  # Ranks checkpoints; every class is trained and reported.
  config.model.name = "densenet121"
  config.model.init_from = "~/weights/densenet121.safetensors"
  config.loss.name = "bce"  # The 14-class model's loss: the sum of unweighted per-class BCE (section 5).
  config.train.batch_size = 16
  config.train.optimizer = "adam"
  config.train.b1, config.train.b2 = 0.9, 0.999
  config.train.weight_decay = 0.0
  config.train.schedule = "plateau"
  config.train.plateau_factor = 0.1
  config.train.plateau_patience = 1
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 0
  config.train.num_steps = 20 * STEPS_PER_EPOCH
  config.train.eval_every = STEPS_PER_EPOCH
  config.train.checkpoint_every = STEPS_PER_EPOCH // 4
  config.lock()
  return config

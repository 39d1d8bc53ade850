"""Every field jaxcxr reads, with its default and meaning. Other configs import this and override a few.

Run with:  python -m jaxcxr.main --config=configs/base.py --workdir=/tmp/jaxcxr_base
(This base targets the real NIH ChestX-ray14 data; see configs/demo.py for the built-in synthetic data.)
Override any field on the command line, e.g. --config.train.batch_size=64; a misspelt field is an error.
"""

import ml_collections


def get_config(arg=None):
  del arg  # The base has no arms; see hernia.py, pneumothorax.py and demo.py.
  config = ml_collections.ConfigDict()
  # Master seed: parameter init, data order and splits derive from it.
  config.seed = 0
  # Name of the imbalance arm, set by the config string of hernia.py / pneumothorax.py / demo.py.
  config.arm = ""

  config.data = ml_collections.ConfigDict()
  # Where images come from: 'phantom' (built-in synthetic data in the NIH layout, generated on first use)
  # or 'nih' (a folder holding the real ChestX-ray14 release).
  config.data.source = "nih"
  # The data folder. For 'nih': holds Data_Entry_2017_v2020.csv(.gz), train_val_list.txt, test_list.txt and
  # images/ (or images_001/images ... images_012/images). For 'phantom': where the synthetic set is written
  # (empty = ~/.cache/jaxcxr/phantom-<size>px-<n>img-seed<seed>).
  config.data.dir = "~/data/chestxray14"
  # Side length in pixels that images are resized to, once, when the data is prepared.
  config.data.image_size = 224
  # 'official': NIH's train_val_list.txt / test_list.txt with a patient-grouped validation carve-out;
  # 'random': a seeded patient-level 70/10/20 train/val/test split (as CheXNet used).
  config.data.split = "official"
  # 'official' only: fraction of train_val patients held out for validation (thresholds, checkpoint choice).
  config.data.val_fraction = 0.1
  # The pathology the imbalance machinery and checkpoint selection focus on (one of the 14 NIH labels).
  config.data.target = "Hernia"
  # Grain worker processes for the training input (0 = read in the main process).
  config.data.num_workers = 0
  # Parameters of the synthetic data (used only when source == 'phantom').
  config.data.phantom = ml_collections.ConfigDict()
  config.data.phantom.num_images = 20_000  # Images to generate (about 77% train_val, 23% test).
  config.data.phantom.hernia_prevalence = 0.002  # Share of images with Hernia (NIH: 0.2%).
  config.data.phantom.label_noise = 0.0  # Probability that a true positive label is written as negative.
  config.data.phantom.seed = 0  # Seed of the generator (independent of `seed`, so arms share one dataset).

  config.model = ml_collections.ConfigDict()
  # 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152' (canonical, one-channel stem);
  # 'densenet121', 'densenet169'; 'resnet10_w16' (narrow, for CPU demos) and 'resnet_tiny' (tests).
  config.model.name = "resnet50"
  # Compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), 'float32' or 'bfloat16'. Params stay fp32.
  config.model.dtype = "auto"
  # Initial head bias: 'prior' (each class's log prior odds on the training split, so rare classes start
  # calibrated) or 'zero'.
  config.model.head_bias = "prior"
  # Optional local safetensors file of ImageNet weights in torchvision's or timm's naming (resnet*,
  # densenet*): the trunk is loaded (RGB stem summed into the grey one), the head stays new. '' = random.
  # Convert a torchvision .pth with `python -m jaxcxr.convert_weights --input X.pth --output X.safetensors`.
  config.model.init_from = ""

  config.loss = ml_collections.ConfigDict()
  # 'bce', 'weighted_bce' (cost-sensitive), 'focal', 'class_balanced' (Cui et al. 2019 effective number).
  config.loss.name = "bce"
  # weighted_bce: how positive weights derive from training counts: 'inverse' (n_neg / n_pos),
  # 'sqrt_inverse' (its square root) or 'effective' (effective number of samples with `beta`).
  config.loss.pos_weight = "sqrt_inverse"
  # Upper bound on any positive weight (0 = no bound).
  config.loss.pos_weight_max = 100.0
  # focal: weight alpha of positives (and 1 - alpha of negatives); -1 disables alpha weighting.
  config.loss.alpha = -1.0
  # focal and class_balanced: focusing parameter gamma (0 = no focusing).
  config.loss.gamma = 2.0
  # class_balanced / 'effective' weights: beta of the effective number (1 - beta^n) / (1 - beta).
  config.loss.beta = 0.999

  config.train = ml_collections.ConfigDict()
  # Global batch size over all devices and processes (must divide by the device count).
  config.train.batch_size = 128
  # Eval batch size (global); 0 = same as batch_size.
  config.train.eval_batch_size = 0
  # Optimiser steps in the whole run.
  config.train.num_steps = 30_000
  # Steps between validation passes (their target-class AUPRC ranks checkpoints).
  config.train.eval_every = 2_000
  # Steps between checkpoints (a checkpoint is also written at every evaluation and at the end).
  config.train.checkpoint_every = 1_000
  # Steps between fetching metrics to the host (logs, progress bar, non-finite check).
  config.train.log_every = 50
  # Checkpoints kept besides the best one.
  config.train.keep_checkpoints = 3
  # Peak learning rate of the warm-up + cosine schedule (AdamW).
  config.train.learning_rate = 1e-3
  # Linear warm-up steps before the cosine decay.
  config.train.warmup_steps = 500
  # AdamW decoupled weight decay, applied to kernels only.
  config.train.weight_decay = 1e-4
  # Threshold rule on validation for the report: 'max_f1', 'youden', 'target_recall' or 'fixed' (0.5).
  config.train.threshold_rule = "max_f1"
  # Recall the 'target_recall' rule aims for (sensitivity first for critical findings).
  config.train.target_recall = 0.9

  config.smote = ml_collections.ConfigDict()
  # Feature-space resampling after training (jaxcxr.smote): 'none' (no SMOTE stage after training),
  # 'random' (duplication), 'smote', 'borderline1', 'borderline2', 'adasyn' (imbalanced-learn). Fitted on
  # the training embeddings only, one label at a time (one-vs-rest).
  config.smote.method = "none"
  # Neighbours among a label's positives that SMOTE interpolates towards (ADASYN: its n_neighbors). A
  # label with fewer positives than this + 1 gets k = positives - 1 (duplication when it has one).
  config.smote.k_neighbors = 5
  # Desired positives / negatives of each label after resampling; labels already above it are left alone.
  config.smote.ratio = 0.1
  # Head trained on the (resampled) embeddings: 'linear' (written back into the model's own head) or
  # 'mlp' (one hidden ReLU layer; reported on embeddings only, it cannot be written into the model).
  config.smote.head = "linear"
  # Hidden units of the 'mlp' head.
  config.smote.hidden = 256
  # Loss of the head: '' = the config's loss (loss.name and its fields), else a loss.name such as 'focal'
  # (which then takes its other fields, e.g. loss.gamma, from config.loss).
  config.smote.loss = ""
  # Optimiser steps, peak learning rate (AdamW, cosine decay) and batch size of the head's training.
  config.smote.steps = 2000
  config.smote.learning_rate = 1e-3
  config.smote.batch_size = 512
  # AdamW weight decay of the head's kernels.
  config.smote.weight_decay = 1e-4
  # Augmented views (K) of each training image that carries data.target, added to the training
  # embeddings before resampling (augment first, then SMOTE); 0 = none. Needs jaxcxr.data.augment.
  config.smote.views = 0
  # Checkpoint of the training run the embeddings come from: 'best', 'latest' or a step number.
  config.smote.checkpoint = "best"
  return config

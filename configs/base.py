"""Every field jaxcxr reads, with its default and meaning. Other configs import this and override a few.

Run with:  python -m jaxcxr.main --config=configs/base.py --workdir=/tmp/jaxcxr_base
(This base targets the real NIH ChestX-ray14 data; see configs/demo.py for the built-in synthetic data.)
Override any field on the command line, e.g. --config.train.batch_size=64; a misspelt field is an error.
"""

import ml_collections


def get_config(arg=None):
  del arg  # The base has no arms; see hernia.py, pneumothorax.py and demo.py.
  config = ml_collections.ConfigDict()
  # Master seed of the run: parameter init, data order and augmentation derive from it (not the split: see
  # data.split_seed), so a multi-seed study varies the training on one fixed set of patients.
  config.seed = 0
  # Name of the imbalance arm, set by the config string of hernia.py / pneumothorax.py / demo.py.
  config.arm = ""

  config.data = ml_collections.ConfigDict()
  # Where images come from: 'phantom' (built-in synthetic data in the NIH layout, generated on first use),
  # 'nih' (a folder holding the real ChestX-ray14 release) or 'chestmnist' (MedMNIST's chestmnist.npz or
  # chestmnist_<size>.npz in data.dir, with its own splits; needs data.split='chestmnist').
  config.data.source = "nih"
  # The data folder. For 'nih': holds Data_Entry_2017_v2020.csv(.gz), train_val_list.txt, test_list.txt and
  # images/ (or images_001/images ... images_012/images). For 'phantom': where the synthetic set is written
  # (empty = ~/.cache/jaxcxr/phantom-v<generator version>-<size>px-<n>img-...).
  config.data.dir = "~/data/chestxray14"
  # 'nih' only: the label file, a name inside data.dir or a path. '' = the first found of
  # Data_Entry_2017_v2020.csv(.gz), Data_Entry_2017.csv(.gz) and sample_labels.csv (the label file of
  # Kaggle's 5,606-image "Random Sample of NIH Chest X-ray Dataset", which has no official split lists:
  # use data.split='random' with it).
  config.data.label_file = ""
  # Side length in pixels that images are resized to, once, when the data is prepared.
  config.data.image_size = 224
  # 'official': NIH's train_val_list.txt / test_list.txt with a patient-grouped validation carve-out;
  # 'random': a patient-level 70/10/20 train/val/test split (as CheXNet used; stratified like the carve-out,
  # seeded by data.split_seed); 'chestmnist': the npz file's own splits (data.source='chestmnist' only; no
  # patient ids, so not patient-checked).
  config.data.split = "official"
  # 'official' only: fraction of train_val patients held out for validation (thresholds, checkpoint choice).
  # The carve-out is patient-grouped and stratified: about this fraction of the patients and of every
  # label's positive images, and round(val_fraction x the target-positive patients) carrying data.target.
  config.data.val_fraction = 0.1
  # Seed of the split alone: the official split's validation carve-out and the random split's
  # train/val/test patients change with it and with nothing else (independent of `seed`).
  config.data.split_seed = 0
  # The pathology the imbalance machinery and checkpoint selection focus on (one of the 14 NIH labels).
  config.data.target = "Hernia"
  # Images that are missing, empty (zero bytes), truncated or corrupt are left out and listed in
  # <data.dir>/jaxcxr_prepared/<size>px-<key>/preparation_report.json; True makes any of them a fatal error.
  config.data.strict = False
  # Grain worker processes for the training input (0 = read in the main process).
  config.data.num_workers = 0
  # Parameters of the synthetic data (used only when source == 'phantom').
  config.data.phantom = ml_collections.ConfigDict()
  config.data.phantom.num_images = 20_000  # Images to generate (about 77% train_val, 23% test).
  config.data.phantom.hernia_prevalence = 0.002  # Share of images with Hernia (NIH: 0.2%).
  # Scale of the per-finding label noise (jaxcxr/data/phantom.py LABEL_NOISE: shares of painted positives
  # written negative, and fewer spurious positives): 1 = those rates, 0 = the painted labels. The painted
  # labels are always written beside, in Data_Entry_clean.csv.
  config.data.phantom.label_noise = 1.0
  config.data.phantom.seed = 0  # Seed of the generator (independent of `seed`, so arms share one dataset).
  # Oversampling of the training stream (jaxcxr/data/sampling.py); validation and test are never resampled.
  config.data.sampling = ml_collections.ConfigDict()
  # 'none' (each image once per epoch), 'repeat_factor' (LVIS: r = max(1, sqrt(threshold / f)) from the
  # image's rarest label), 'target_ratio' (data.target makes up `ratio` of every epoch) or 'class_balanced'
  # (multi-label class-aware sampling: P(image) proportional to the sum of 1 / n_class over its labels).
  config.data.sampling.name = "none"
  # repeat_factor: the label frequency t below which images are repeated.
  config.data.sampling.threshold = 0.05
  # target_ratio: share of every epoch made of images carrying data.target.
  config.data.sampling.ratio = 0.5
  # Most times one image may appear in one epoch (target_ratio shortens the epoch rather than exceed it).
  config.data.sampling.cap = 50
  # Fraction of No Finding images (no label) kept in each epoch, drawn afresh per epoch (1.0 = all).
  config.data.sampling.undersample_no_finding = 1.0
  # Augmentation of training images inside the jitted train step (jaxcxr/data/augment.py); validation and
  # test images are never augmented. Label-blind by default: one distribution for every training image (the
  # minority is preferred by sampling, each repeat of a rare image drawing its own augmentation).
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.enabled = False  # Off: the step sees the images as stored.
  config.data.augment.probability = 0.8  # Chance that a training image is augmented at all.
  config.data.augment.strength = 1.0  # Scale of every range below (1 = the full range).
  # Opt-in, off by default: True gives images carrying data.target their own probability and strength (the
  # two fields below; the fields above then apply to the other images). This creates a shortcut: with a
  # stronger minority strength, large warps (a wide black border, a large rotation) occur only on target
  # images, a cue present in training and absent at test time. Kept to measure its effect (the
  # `oversample_labelaug` arm).
  config.data.augment.label_dependent = False
  config.data.augment.minority_probability = 0.9  # label_dependent only: probability for target images.
  config.data.augment.minority_strength = 1.0  # label_dependent only: strength for target images.
  config.data.augment.rotation = 10.0  # Rotation range in degrees (uniform in +/- rotation).
  config.data.augment.scale = 0.1  # Zoom range: factor uniform in 1 +/- scale.
  config.data.augment.translate = 0.1  # Shift range as a fraction of the image side, per axis.
  config.data.augment.shear = 5.0  # Shear range in degrees.
  config.data.augment.brightness = 0.1  # Additive brightness range (fraction of full scale).
  config.data.augment.contrast = 0.2  # Contrast factor uniform in 1 +/- contrast, about the image mean.
  config.data.augment.gamma = 0.2  # Gamma = exp(uniform in +/- gamma).
  config.data.augment.noise = 0.02  # Largest standard deviation of added Gaussian noise (fraction of full scale).
  # Probability of a horizontal (left-right) flip; 0 by default because laterality matters. There is no
  # vertical flip.
  config.data.augment.hflip = 0.0

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
  # 'bce', 'weighted_bce' (cost-sensitive), 'focal', 'class_balanced' (Cui et al. 2019 effective number),
  # 'asl' (asymmetric loss, Ridnik et al. 2021), 'ldam' (label-distribution-aware margins, Cao et al. 2019,
  # with deferred re-weighting) or 'logit_adjusted' (Menon et al. 2021). See jaxcxr/losses.py.
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
  # asl: focusing exponents of the positive and the negative term, and the probability shift of negatives
  # (p_m = max(p - clip, 0): negatives with p <= clip cost nothing). Defaults: the CXR-LT 2023 winner's.
  config.loss.gamma_pos = 1.0
  config.loss.gamma_neg = 4.0
  config.loss.clip = 0.05
  # ldam: margin of the class with fewest positives; class c's margin is max_margin * (n_min / n_c)^(1/4),
  # subtracted from the logit of its positives during training only (predictions use the raw logits).
  config.loss.max_margin = 0.5
  # ldam: scale s of the margined logits inside the BCE (1 = the head's own logit scale).
  config.loss.scale = 1.0
  # ldam: deferred re-weighting starts after this fraction of the training steps (train.num_steps for the
  # backbone, smote.steps for a SMOTE head): from then on each class's positive and negative terms take the
  # class_balanced weights (effective number, `beta`); before, they weigh 1. 1.0 = never. The loss gets
  # the optimiser step as its third argument, loss_fn(logits, labels, step), from the train step.
  config.loss.drw_start = 0.8
  # logit_adjusted: tau, the weight of each class's log prior odds (training counts) added to its logit
  # during training; predictions use the raw logits. 0 = plain BCE.
  config.loss.tau = 1.0

  config.train = ml_collections.ConfigDict()
  # Global batch size over all devices and processes (must divide by the device count).
  config.train.batch_size = 128
  # Eval batch size (global); 0 = same as batch_size.
  config.train.eval_batch_size = 0
  # Optimiser steps in the whole run.
  config.train.num_steps = 30_000
  # Steps between validation passes (their AUPRC ranks checkpoints, see rank_by).
  config.train.eval_every = 2_000
  # What ranks checkpoints ('best'): 'target' (data.target's validation AUPRC; training stops before it
  # starts when validation holds no target positive) or 'macro' (the mean validation AUPRC over the classes
  # with positives: an explicit opt-in, logged as val_macro_auprc).
  config.train.rank_by = "target"
  # Steps between checkpoints (a checkpoint is also written at every evaluation and at the end).
  config.train.checkpoint_every = 1_000
  # Steps between fetching metrics to the host (logs, progress bar, non-finite check).
  config.train.log_every = 50
  # Checkpoints kept besides the best one.
  config.train.keep_checkpoints = 3
  # Optimiser: 'adamw' (decoupled weight decay on kernels) or 'adam' (CheXNet's; decay only if weight_decay > 0).
  config.train.optimizer = "adamw"
  # Adam's moment decay rates.
  config.train.b1 = 0.9
  config.train.b2 = 0.999
  # Learning-rate schedule: 'warmup_cosine' (linear warm-up, cosine decay to zero at num_steps) or
  # 'plateau' (linear warm-up, then constant, multiplied by plateau_factor whenever the validation loss,
  # measured every eval_every steps, has not improved for plateau_patience evaluations; CheXNet's recipe).
  config.train.schedule = "warmup_cosine"
  config.train.plateau_factor = 0.1  # 'plateau': factor applied to the learning rate at each plateau.
  config.train.plateau_patience = 1  # 'plateau': evaluations without improvement before a decay.
  config.train.plateau_rtol = 1e-4  # 'plateau': relative improvement of the validation loss that counts.
  config.train.plateau_min_scale = 0.0  # 'plateau': the learning rate is never scaled below this factor.
  # Peak learning rate (after warm-up).
  config.train.learning_rate = 1e-3
  # Linear warm-up steps before the cosine decay.
  config.train.warmup_steps = 500
  # Decoupled weight decay, applied to kernels only.
  config.train.weight_decay = 1e-4
  # Threshold rule on validation for the report: 'max_f1', 'youden', 'target_recall' or 'fixed' (0.5).
  config.train.threshold_rule = "max_f1"
  # Recall the 'target_recall' rule aims for (sensitivity first for critical findings).
  config.train.target_recall = 0.9
  # Folder of JAX's persistent compilation cache: reruns and resumed runs read their compiled steps from
  # it instead of compiling again ('' = off; a gs:// URL works for pods).
  config.train.compilation_cache = "~/.cache/jaxcxr/xla"
  # A rerun of a workdir whose config.json differs from this config in anything but the safe fields
  # (num_steps, intervals, workers, data.dir) stops with the differences; True continues with the new config.
  config.train.accept_config_change = False

  config.parallel = ml_collections.ConfigDict()
  # How the step runs over the 1-D 'data' mesh of every device: 'jit' (one jitted step on the sharded
  # global batch; XLA inserts the gradient all-reduce and global BatchNorm statistics) or 'shard_map' (an
  # explicit per-device step: gradients averaged with jax.lax.pmean, BatchNorm statistics synchronised
  # over 'data'). Both give the same parameters up to float rounding; 'jit' is the default.
  config.parallel.mode = "jit"

  config.smote = ml_collections.ConfigDict()
  # Feature-space resampling after training (jaxcxr.smote): 'none' (no SMOTE stage after training),
  # 'random' (duplication), 'smote', 'borderline1', 'borderline2', 'adasyn' (imbalanced-learn), fitted one
  # label at a time (one-vs-rest); or 'mlsmote' (Charte et al. 2015, jaxcxr/mlsmote.py: one synthetic row per
  # row carrying each minority label, labels by the neighbours' majority; ignores `ratio`). Fitted on the
  # training embeddings only.
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

  config.crt = ml_collections.ConfigDict()
  # Decoupled classifier re-training (cRT, Kang et al. 2020; best on NIH-CXR-LT) after training: the
  # backbone is frozen, a new linear head is trained on its training embeddings with class-balanced
  # sampling (P(image) proportional to the sum of 1 / n_class over its labels), reported in WORKDIR/crt/ and
  # written back into a checkpoint there. Arm 'crt' turns it on.
  config.crt.enabled = False
  # Loss of the new head: '' = the config's loss (loss.name and its fields), else a loss.name.
  config.crt.loss = ""
  # Optimiser steps, peak learning rate (AdamW, cosine decay), batch size and kernel weight decay.
  config.crt.head = "linear"  # The only kind: a linear head is what replaces the model's own.
  config.crt.steps = 2000
  config.crt.learning_rate = 1e-3
  config.crt.batch_size = 512
  config.crt.weight_decay = 1e-4
  # Checkpoint of the training run whose embeddings are used: 'best', 'latest' or a step number.
  config.crt.checkpoint = "best"
  return config

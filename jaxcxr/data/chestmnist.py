"""data.source='chestmnist': MedMNIST's ChestMNIST (NIH ChestX-ray14 at 28-224 px) from its .npz file.

  python -m jaxcxr.main --config=configs/base.py --config.data.source=chestmnist --config.data.split=chestmnist \
      --config.data.dir=~/data/medmnist --config.data.image_size=64 --workdir=/tmp/chestmnist

The file (chestmnist.npz, or chestmnist_64.npz / _128 / _224 from MedMNIST+) holds train/val/test images
(N, H, W) uint8 and labels (N, 14) in MedMNIST's class order, which is not jaxcxr's: columns are mapped by
name onto `nih.CLASSES`. The splits are the file's own. ChestMNIST has no patient ids, so its splits cannot
be checked for patients crossing them and every image counts as its own patient (e.g. in bootstrap
intervals); reports name the split 'chestmnist/...' so that no one mistakes them for patient-level splits.
Images are resized to data.image_size (PIL bilinear) when the file holds another size.
"""

import glob
import os
import re

import numpy as np
from PIL import Image

from jaxcxr.data import nih
from jaxcxr.data import split as split_lib

# MedMNIST's ChestMNIST label columns (its INFO['chestmnist']['label'], '0' ... '13').
MEDMNIST_CLASSES = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural thickening",
                    "hernia")
SPLITS = {"train": "train", "val": "val", "test": "test"}  # jaxcxr split -> npz key prefix.
DOWNLOAD = ("Get chestmnist.npz (28 px) or chestmnist_{64,128,224}.npz from MedMNIST "
            "(https://medmnist.com, Zenodo record 10519652) into that folder.")


def _key(name):
  return re.sub(r"[^a-z]", "", name.lower())


def column_order():
  """For each of nih.CLASSES, the ChestMNIST column holding it (matched by name, not position)."""
  where = {_key(c): i for i, c in enumerate(MEDMNIST_CLASSES)}
  return np.asarray([where[_key(c)] for c in nih.CLASSES], np.int64)


def find_file(directory, size):
  """The npz to read: chestmnist_<size>.npz if present, else the smallest one at least `size` px, else the largest."""
  exact = os.path.join(directory, f"chestmnist_{size}.npz")
  if os.path.exists(exact):
    return exact
  found = {}
  for path in glob.glob(os.path.join(directory, "chestmnist*.npz")):
    m = re.fullmatch(r"chestmnist(?:_(\d+))?\.npz", os.path.basename(path))
    if m:
      found[int(m.group(1) or 28)] = path
  if not found:
    raise nih.DataError(f"No chestmnist.npz (or chestmnist_<size>.npz) in {directory}. {DOWNLOAD}")
  bigger = [s for s in found if s >= size]
  return found[min(bigger)] if bigger else found[max(found)]


def _resize(images, size):
  if images.shape[1:] == (size, size):
    return images
  return np.stack([split_lib.resize(Image.fromarray(a), size) for a in images])


def read(path, size):
  """{'train', 'val', 'test'} -> (images (N, size, size) uint8, labels (N, 14) uint8 in nih.CLASSES order)."""
  try:
    npz = np.load(path, allow_pickle=False)
    if not hasattr(npz, "files"):
      raise ValueError("a single .npy array, not an .npz archive")
    with npz:
      raw = {k: npz[k] for k in npz.files}
  except (OSError, ValueError) as e:
    raise nih.DataError(f"{path}: cannot read it as a ChestMNIST npz ({type(e).__name__}: {e}). {DOWNLOAD}"
                        ) from None
  order = column_order()
  out = {}
  for split, prefix in SPLITS.items():
    for key in (f"{prefix}_images", f"{prefix}_labels"):
      if key not in raw:
        raise nih.DataError(f"{path}: no array {key!r} (found: {', '.join(sorted(raw))}). {DOWNLOAD}")
    images, labels = raw[f"{prefix}_images"], raw[f"{prefix}_labels"]
    if images.ndim == 4 and images.shape[-1] == 1:
      images = images[..., 0]
    if images.ndim != 3 or images.dtype != np.uint8:
      raise nih.DataError(f"{path}: {prefix}_images is {images.dtype} {images.shape}; expected (N, H, W) uint8.")
    if labels.shape != (len(images), len(MEDMNIST_CLASSES)):
      raise nih.DataError(f"{path}: {prefix}_labels is {labels.shape}; expected ({len(images)}, "
                          f"{len(MEDMNIST_CLASSES)}), one column per ChestMNIST class.")
    if not np.isin(labels, (0, 1)).all():
      raise nih.DataError(f"{path}: {prefix}_labels holds values other than 0 and 1.")
    out[split] = (_resize(images, size), labels[:, order].astype(np.uint8))
  return out


def load_splits(config, directory):
  """{'train', 'val', 'test'} -> split.Split from the ChestMNIST npz in `directory`."""
  if config.data.split != "chestmnist":
    raise nih.DataError(f"data.source='chestmnist' uses the file's own splits, which have no patient ids; set "
                        f"--config.data.split=chestmnist (not {config.data.split!r}) so that reports say so.")
  if not os.path.isdir(directory):
    raise nih.DataError(f"Data folder {directory} not found. {DOWNLOAD}")
  parts = read(find_file(directory, config.data.image_size), config.data.image_size)
  images = np.concatenate([parts[s][0] for s in SPLITS])
  out, start = {}, 0
  for split in SPLITS:
    n = len(parts[split][0])
    ids = np.arange(start, start + n)
    meta = nih.Metadata(np.asarray([f"chestmnist/{split}/{i - start:06d}" for i in ids]), ids.astype(np.int64),
                        parts[split][1])
    out[split] = split_lib.Split(split, meta, images, ids.astype(np.int64))
    start += n
  return out

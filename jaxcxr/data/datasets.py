"""Resolves `config.data` into train/val/test splits of uint8 images held in prepared arrays.

Both sources go through the same NIH code path: the phantom data is written in the NIH layout first.
Images are decoded and resized once into `<data.dir>/jaxcxr_prepared/<size>px.npy` (uint8, memory-mapped),
so the training loop never decodes a PNG.
"""

import dataclasses
import hashlib
import json
import multiprocessing
import os

from absl import logging
import numpy as np
from PIL import Image
import tqdm

from jaxcxr.data import nih

NIH_DOWNLOAD = """\
Download NIH ChestX-ray14 (about 45 GB) from https://nihcc.app.box.com/v/ChestXray-NIHCC (or Kaggle's
'nih-chest-xrays/data'): Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt and the 12 image
archives, unpacked so that images/ (or images_001/images ... images_012/images) sits in that folder.
Point --config.data.dir at it. To try jaxcxr without it, run the built-in synthetic demo:
  python -m jaxcxr.main --config=configs/demo.py --workdir=/tmp/jaxcxr_demo"""


@dataclasses.dataclass
class Split:
  """One split: metadata rows and, for row i, the image `images[rows[i]]` ((S, S) uint8)."""
  name: str
  meta: nih.Metadata
  images: np.ndarray  # (M, S, S) uint8, memory-mapped, shared by all splits.
  rows: np.ndarray  # (N,) int64 into `images`.

  def __len__(self):
    return len(self.meta)


def data_dir(config):
  """The data folder `config.data` points at (for the phantom, a default cache folder if unset)."""
  d = config.data.dir
  if config.data.source == "phantom" and not d:
    p = config.data.phantom
    d = os.path.join("~", ".cache", "jaxcxr",
                     f"phantom-{config.data.image_size}px-{p.num_images}img-h{p.hernia_prevalence}-"
                     f"n{p.label_noise}-seed{p.seed}")
  return os.path.abspath(os.path.expanduser(d))


def _ensure_phantom(config, directory):
  from jaxcxr.data import phantom  # pylint: disable=g-import-not-at-top
  p = config.data.phantom
  phantom.ensure(directory, num_images=p.num_images, image_size=config.data.image_size, seed=p.seed,
                 label_noise=p.label_noise, prevalence={"Hernia": p.hernia_prevalence})


def _decode(args):
  """Reads one image as 8-bit grey at size x size; returns (array or None, error or None)."""
  path, size = args
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode in ("I;16", "I;16B", "I"):
        a = np.asarray(im, np.float32)
        im = Image.fromarray((a / max(a.max(), 1.0) * 255.0).astype(np.uint8))
      im = im.convert("L")
      if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
      return np.asarray(im, np.uint8), None
  except Exception as e:  # pylint: disable=broad-except
    return None, f"{type(e).__name__}: {e}"


class _InProcess:
  """A stand-in for a process pool when the work is too small to pay for starting workers."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def imap(self, fn, items, chunksize=1):
    del chunksize
    return map(fn, items)


def _prepare(directory, meta, size, num_workers=None):
  """Decodes the images of `meta` once into a memory-mapped uint8 array; returns (meta kept, images)."""
  out_dir = os.path.join(directory, "jaxcxr_prepared")
  key = hashlib.sha1("\n".join(meta.names).encode()).hexdigest()[:12]
  array_path = os.path.join(out_dir, f"{size}px-{key}.npy")
  index_path = array_path[:-4] + ".json"
  if os.path.exists(index_path):  # Written last: its presence means the array is complete.
    with open(index_path) as f:
      kept = np.asarray(json.load(f)["kept"], np.int64)
    return meta.subset(kept), np.load(array_path, mmap_mode="r")
  paths = nih.find_images(directory, meta.names)
  present = np.asarray([paths[n] is not None for n in meta.names])
  if not present.any():
    raise nih.DataError(f"None of the {len(meta)} images listed in the label file were found under {directory}/images "
                        f"or {directory}/images_0NN/images.\n{NIH_DOWNLOAD}")
  os.makedirs(out_dir, exist_ok=True)
  todo = np.flatnonzero(present)
  tmp_path = array_path + ".tmp"
  images = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=(len(todo), size, size))
  problems, good = [], np.zeros(len(todo), bool)
  work = [(paths[meta.names[i]], size) for i in todo]
  workers = min(num_workers or os.cpu_count() or 1, max(1, len(work) // 2000))
  # 'spawn', not fork: JAX may already run threads in this process, and forking those can deadlock.
  with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _InProcess() as pool:
    jobs = pool.imap(_decode, work, chunksize=64)
    for j, (a, err) in enumerate(tqdm.tqdm(jobs, total=len(todo), desc=f"Preparing {size}px images",
                                         unit="img", smoothing=0.1)):
      if err is None:
        images[j], good[j] = a, True
      else:
        problems.append((meta.names[todo[j]], err))
  images.flush()
  del images
  missing = int((~present).sum())
  if missing:
    logging.warning("%d of %d listed images are absent from %s; training on the %d present.", missing,
                    len(meta), directory, len(todo))
  for name, err in problems:
    logging.warning("Left out unreadable image %s: %s", name, err)
  kept = todo[good]
  if not good.all():  # Compact the array so that it holds good images only.
    full = np.load(tmp_path, mmap_mode="r")
    np.save(tmp_path + ".npy", full[good])
    del full
    os.replace(tmp_path + ".npy", tmp_path)
  os.replace(tmp_path, array_path)
  with open(index_path + ".tmp", "w") as f:
    json.dump({"kept": kept.tolist(), "missing": missing, "unreadable": problems}, f)
  os.replace(index_path + ".tmp", index_path)
  return meta.subset(kept), np.load(array_path, mmap_mode="r")


def load_splits(config):
  """Returns {'train', 'val', 'test'} -> Split for `config.data`, preparing images on first use."""
  directory = data_dir(config)
  if config.data.source == "phantom":
    _ensure_phantom(config, directory)
  elif config.data.source != "nih":
    raise nih.DataError(f"Unknown data.source {config.data.source!r}; choose 'phantom' or 'nih'.")
  label_file = nih.find_label_file(directory) if os.path.isdir(directory) else None
  if label_file is None:
    raise nih.DataError(f"No NIH ChestX-ray14 label file ({nih.LABEL_FILE}) in {directory}.\n{NIH_DOWNLOAD}")
  meta = nih.read_labels(label_file)
  if config.data.target not in nih.CLASSES:
    raise nih.DataError(f"data.target {config.data.target!r} is not one of {', '.join(nih.CLASSES)}.")
  splits = nih.split(meta, directory, name=config.data.split, val_fraction=config.data.val_fraction,
                     seed=config.seed)
  kept, images = _prepare(directory, meta, config.data.image_size)
  where = {n: i for i, n in enumerate(kept.names)}
  out = {}
  for name, m in splits.items():
    rows = np.asarray([where.get(n, -1) for n in m.names], np.int64)
    present = rows >= 0
    out[name] = Split(name, m.subset(present), images, rows[present])
  return out

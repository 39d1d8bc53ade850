"""Resolves `config.data` into train/val/test splits of uint8 images held in prepared arrays.

The phantom and NIH sources go through the same NIH code path: the phantom data is written in the NIH
layout first. Images are decoded and resized once (all CPU cores, resumable) into
`<data.dir>/jaxcxr_prepared/<size>px-<key>/`:

  images.npy                 (M, S, S) uint8, memory-mapped by the loader; a row per image found on disk.
  progress.json              the chunks decoded so far (only while preparing; a rerun resumes from it).
  preparation_report.json    images prepared, and every image left out by name and reason.
  index.json                 written last, atomically: its presence alone means the folder is complete.

`python -m jaxcxr.prepare` runs this ahead of training (and exports a TFDS ArrayRecord dataset); otherwise
`load_splits` does it on first use. data.source='chestmnist' reads MedMNIST's npz instead (chestmnist.py).
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

from jaxcxr.data import chestmnist
from jaxcxr.data import nih
from jaxcxr.data import split as split_lib

NIH_DOWNLOAD = """\
Download NIH ChestX-ray14 (about 45 GB) from https://nihcc.app.box.com/v/ChestXray-NIHCC (or Kaggle's
'nih-chest-xrays/data'): Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt and the 12 image
archives, unpacked so that images/ (or images_001/images ... images_012/images) sits in that folder.
Point --config.data.dir at it. To try jaxcxr without it, run the built-in synthetic demo:
  python -m jaxcxr.main --config=configs/demo.py --workdir=/tmp/jaxcxr_demo"""

PREPARED = "jaxcxr_prepared"
REPORT = "preparation_report.json"
INDEX = "index.json"  # The completion marker, written last.
# Bumped whenever decoding changes, so that older prepared folders are not reused.
DECODER_VERSION = 3
# How images reach the training resolution; recorded in the report and in the TFDS dataset's metadata.
RESIZE_METHOD = split_lib.RESIZE_METHOD
# Why an image is left out, in report order.
REASONS = ("missing", "empty", "truncated", "corrupt")
CHUNK_SIZE = 256  # Images per unit of work; a killed preparation loses at most one chunk per worker.


@dataclasses.dataclass
class Prepared:
  """The outcome of `prepare`: rows of the label file kept, their images, and the report."""
  meta: nih.Metadata  # The listed images that decoded, in label-file order.
  images: np.ndarray  # (M, S, S) uint8 memmap; image i of `meta` is images[rows[i]].
  rows: np.ndarray  # (len(meta),) int64.
  report: dict  # The contents of preparation_report.json.
  directory: str  # The prepared folder.


def data_dir(config):
  """The data folder `config.data` points at (for the phantom, a default cache folder if unset)."""
  d = config.data.dir
  if config.data.source == "phantom" and not d:
    from jaxcxr.data import phantom  # pylint: disable=g-import-not-at-top
    p = config.data.phantom
    d = os.path.join("~", ".cache", "jaxcxr",
                     f"phantom-v{phantom.GENERATOR_VERSION}-{config.data.image_size}px-{p.num_images}img-"
                     f"h{p.hernia_prevalence}-"
                     f"n{p.label_noise}-seed{p.seed}")
  return os.path.abspath(os.path.expanduser(d))


def _ensure_phantom(config, directory):
  from jaxcxr.data import phantom  # pylint: disable=g-import-not-at-top
  p = config.data.phantom
  phantom.ensure(directory, num_images=p.num_images, image_size=config.data.image_size, seed=p.seed,
                 label_noise=p.label_noise, prevalence={"Hernia": p.hernia_prevalence})


# ----------------------------------------------------------------------------------------------------------
# Decoding one image.
# ----------------------------------------------------------------------------------------------------------

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_grey(im):
  """An opened PIL image as (H, W) uint8 grey.

  8-bit grey as is; 16-bit grey rescaled by its bit depth (0 -> 0, 65535 -> 255, rounded); RGB, RGBA,
  palette and the like: the colour channels when they agree (alpha ignored), else ITU-R 601-2 luminance
  (PIL's 'L': 0.299 R + 0.587 G + 0.114 B).
  """
  if im.mode == "L":
    return np.asarray(im, np.uint8)
  if im.mode in _SIXTEEN_BIT:
    a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)
  if im.mode in ("LA", "La"):
    return np.asarray(im.getchannel(0), np.uint8)
  if im.mode in ("1", "F"):
    return np.asarray(im.convert("L"), np.uint8)
  rgb = im.convert("RGB")
  a = np.asarray(rgb, np.uint8)
  if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
    return a[..., 0].copy()
  return np.asarray(rgb.convert("L"), np.uint8)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_grey8_png(data):
  """8-bit grey, non-interlaced PNG bytes (every NIH image) -> (H, W) uint8 through libpng, else None.

  libpng (imagecodecs) decodes these 1.1-1.2x faster than PIL, and like PIL it rejects truncated data
  and failed checksums. Anything else, and anything libpng rejects, returns None: PIL then decodes the
  file or says what is wrong with it, so the report's reasons do not depend on this shortcut.
  """
  # IHDR is always the first chunk: bytes 24, 25 and 28 hold bit depth, colour type and interlacing.
  if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x00" \
      or data[28] != 0:
    return None
  import imagecodecs  # pylint: disable=g-import-not-at-top  (only preparation decodes; 0.1 s to import)
  try:
    a = imagecodecs.png_decode(data)
  except Exception:  # pylint: disable=broad-except  (imagecodecs.PngError and kin: PIL gives the verdict)
    return None
  return a if a.ndim == 2 and a.dtype == np.uint8 and min(a.shape) > 0 else None


def _cut_png(data):
  """True for the start of a PNG whose end (its IEND chunk) is missing: a file cut short."""
  return data.startswith(_PNG_SIGNATURE[:len(data)]) and b"IEND" not in data[-4096:]


def decode(path, size):
  """Reads one image file as (size, size) uint8 grey; returns (array, None) or (None, (reason, detail))."""
  data = b""
  try:
    with open(path, "rb") as f:
      data = f.read()
    if not data:
      return None, ("empty", "zero-byte file")
    a = _decode_grey8_png(data)
    if a is not None:
      return split_lib.resize(Image.fromarray(a), size), None
    with Image.open(path) as im:
      im.load()
      if im.mode == "L":
        return split_lib.resize(im, size), None
      a = to_grey(im)
  except FileNotFoundError:
    return None, ("missing", "file vanished during preparation")
  except (EOFError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    text = f"{type(e).__name__}: {e}".replace(path, os.path.basename(path))
    truncated = isinstance(e, EOFError) or "truncated" in str(e).lower() or _cut_png(data)
    reason = "truncated" if truncated else "corrupt"
    return None, (reason, text)
  if a.ndim != 2 or min(a.shape) == 0:
    return None, ("corrupt", f"unexpected pixel array shape {a.shape}")
  return split_lib.resize(Image.fromarray(a), size), None


def resize_grey(a, size):
  """(H, W) uint8 grey -> (size, size) uint8, resized exactly as `decode` resizes what `prepare` stores
  (for images that reach 8-bit grey another way, e.g. DICOM in jaxcxr.data.readers)."""
  return split_lib.resize(Image.fromarray(np.ascontiguousarray(a, np.uint8)), size)


def _decode_chunk(job):
  """Worker: decodes one chunk into rows start.. of the array file; returns (start, [(offset, reason, detail)])."""
  array_path, start, paths, size = job
  images = np.load(array_path, mmap_mode="r+")
  errors = []
  for j, path in enumerate(paths):
    a, err = decode(path, size)
    if err is None:
      images[start + j] = a
    else:
      errors.append((j, *err))
  images.flush()  # On disk before the chunk is recorded as done.
  del images
  return start, errors


class _InProcess:
  """A stand-in for a process pool when the work is too small to pay for starting workers."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def imap_unordered(self, fn, items, chunksize=1):
    del chunksize
    return map(fn, items)


# ----------------------------------------------------------------------------------------------------------
# Preparing a dataset: resumable, all cores, a report of what was left out.
# ----------------------------------------------------------------------------------------------------------


def _write_json(path, obj):
  """Writes JSON atomically: a reader (or a rerun after a kill) sees the old file or the new, never half."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def prepared_dir(directory, meta, size):
  """The folder that the images of `meta` at `size` px are (or will be) prepared into."""
  key = hashlib.sha1("\n".join([f"v{DECODER_VERSION}", str(size), *meta.names]).encode()).hexdigest()[:12]
  return os.path.join(directory, PREPARED, f"{size}px-{key}")


def summary(report):
  """A few readable lines: how many images were prepared, how many left out and why, where the list is."""
  left = report["left_out"]
  lines = [f"Prepared {report['prepared']:,} of {report['listed']:,} listed images at {report['image_size']} px "
           f"into {report['directory']}."]
  if sum(left.values()):
    why = ", ".join(f"{left[r]:,} {r}" for r in REASONS if left[r])
    lines.append(f"Left out {sum(left.values()):,}: {why}. Each is listed by name and reason in "
                 f"{os.path.join(report['directory'], REPORT)}; e.g.")
    lines += [f"  {p['name']}: {p['reason']} ({p['detail']})" for p in report["problems"][:5]]
  else:
    lines.append("Left out none.")
  return "\n".join(lines)


def _strict_error(report):
  problems = report["problems"]
  shown = "\n".join(f"  {p['name']}: {p['reason']} ({p['detail']})" for p in problems[:20])
  more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
  return nih.DataError(
      f"data.strict: {len(problems)} of the {report['listed']} listed images are unusable:\n{shown}{more}\n"
      f"Full list: {os.path.join(report['directory'], REPORT)}. Restore or replace those files (then delete "
      f"{report['directory']}), or run without --strict (data.strict=False) to leave them out.")


def _load_complete(out_dir, meta):
  index = _read_json(os.path.join(out_dir, INDEX))
  if index is None:
    return None
  kept = np.asarray(index["kept"], np.int64)
  images = np.load(os.path.join(out_dir, "images.npy"), mmap_mode="r")
  report = _read_json(os.path.join(out_dir, REPORT))
  return Prepared(meta.subset(kept), images, np.asarray(index["rows"], np.int64), report, out_dir)


def _num_workers(num_workers, n):
  if num_workers:
    return num_workers
  return min(os.cpu_count() or 1, max(1, n // 2000))  # Spawning workers costs ~1 s each: not for tiny sets.


def prepare(directory, meta, *, size, strict=False, num_workers=0, chunk_size=CHUNK_SIZE, progress=True,
            log_summary=True):
  """Decodes the images of `meta` under `directory` once into uint8 at `size` px; returns Prepared.

  Reuses a complete earlier preparation; resumes an interrupted one from the chunks it finished. Missing,
  zero-byte, truncated and corrupt files are left out and listed in preparation_report.json; with `strict`
  any of them is a DataError naming them (missing files before any decoding). `num_workers` 0 = all CPU
  cores (one process for small sets).
  """
  out_dir = prepared_dir(directory, meta, size)
  done = _load_complete(out_dir, meta)
  if done is not None:
    if strict and done.report["problems"]:
      raise _strict_error(done.report)
    if log_summary and done.report["problems"]:
      logging.warning("%d of the %d listed images were left out when %s was prepared; see %s.",
                      len(done.report["problems"]), len(meta), out_dir, os.path.join(out_dir, REPORT))
    return done

  paths = nih.find_images(directory, meta.names)
  present = np.asarray([paths[n] is not None for n in meta.names])
  if not present.any():
    raise nih.DataError(f"None of the {len(meta)} images listed in the label file were found under {directory}/images "
                        f"or {directory}/images_0NN/images.\n{NIH_DOWNLOAD}")
  problems = [{"name": str(n), "reason": "missing", "detail": "listed in the label file, not found on disk"}
              for n in meta.names[~present]]
  base_report = {"directory": out_dir, "data_dir": directory, "image_size": size, "resize_method": RESIZE_METHOD,
                 "decoder_version": DECODER_VERSION, "listed": len(meta)}
  if strict and problems:  # Fail before hours of decoding.
    raise _strict_error({**base_report, "problems": problems})
  os.makedirs(out_dir, exist_ok=True)
  todo = np.flatnonzero(present)
  array_path = os.path.join(out_dir, "images.npy")
  progress_path = os.path.join(out_dir, "progress.json")
  plan = {"rows": len(todo), "size": size, "chunk_size": chunk_size}
  state = _read_json(progress_path)
  if state is None or state.get("plan") != plan or not os.path.exists(array_path):
    np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(len(todo), size, size)).flush()
    state = {"plan": plan, "done": {}}
    _write_json(progress_path, state)
  elif state["done"]:
    logging.info("Resuming the preparation in %s: %d of %d images already decoded.", out_dir,
                 sum(min(chunk_size, len(todo) - int(s)) for s in state["done"]), len(todo))
  jobs = [(array_path, start, [paths[meta.names[i]] for i in todo[start:start + chunk_size]], size)
          for start in range(0, len(todo), chunk_size) if str(start) not in state["done"]]
  workers = min(_num_workers(num_workers, sum(len(j[2]) for j in jobs)), max(1, len(jobs)))
  initial = len(todo) - sum(len(j[2]) for j in jobs)
  with tqdm.tqdm(total=len(todo), initial=initial, desc=f"Preparing {size}px images", unit="img",
                 smoothing=0.1, disable=not progress) as bar:
    # 'spawn', not fork: JAX may already run threads in this process, and forking those can deadlock.
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _InProcess() as pool:
      for start, errors in pool.imap_unordered(_decode_chunk, jobs):
        state["done"][str(start)] = errors
        _write_json(progress_path, state)
        bar.update(min(chunk_size, len(todo) - start))

  good = np.ones(len(todo), bool)
  for start, errors in state["done"].items():
    for offset, reason, detail in errors:
      row = int(start) + offset
      good[row] = False
      problems.append({"name": str(meta.names[todo[row]]), "reason": reason, "detail": detail})
  problems.sort(key=lambda p: (REASONS.index(p["reason"]), p["name"]))
  report = {**base_report, "prepared": int(good.sum()),
            "left_out": {r: sum(p["reason"] == r for p in problems) for r in REASONS}, "problems": problems}
  _write_json(os.path.join(out_dir, REPORT), report)
  _write_json(os.path.join(out_dir, INDEX), {"kept": todo[good].tolist(), "rows": np.flatnonzero(good).tolist()})
  os.remove(progress_path)
  if log_summary:
    (logging.warning if problems else logging.info)("%s", summary(report))
  done = _load_complete(out_dir, meta)
  if strict and problems:
    raise _strict_error(report)
  return done


def _nih_meta(config, directory):
  """The label file's Metadata and the {'train', 'val', 'test'} split of it for `config.data`."""
  try:
    label_file = nih.locate_label_file(directory, config.data.get("label_file", ""))
  except nih.DataError as e:
    raise nih.DataError(f"{e}\n{NIH_DOWNLOAD}") from None
  meta = nih.read_labels(label_file)
  splits = nih.split(meta, directory, name=config.data.split, val_fraction=config.data.val_fraction,
                     seed=config.data.get("split_seed", 0), target=config.data.target)  # Not config.seed.
  return meta, splits


def prepare_config(config, *, num_workers=0, progress=True, log_summary=True):
  """Runs (or reuses) the preparation `config.data` asks for; returns (Prepared, splits name -> Metadata)."""
  directory = data_dir(config)
  if config.data.source == "phantom":
    _ensure_phantom(config, directory)
  elif config.data.source != "nih":
    raise nih.DataError(f"data.source {config.data.source!r} has no image preparation; choose 'phantom' or 'nih'.")
  meta, splits = _nih_meta(config, directory)
  prepared = prepare(directory, meta, size=config.data.image_size, strict=config.data.strict,
                     num_workers=num_workers, progress=progress, log_summary=log_summary)
  return prepared, splits


def _prepared_splits(config):
  """{'train', 'val', 'test'} -> Split of the phantom or NIH source, preparing images on first use."""
  prepared, splits = prepare_config(config)
  where = {n: r for n, r in zip(prepared.meta.names, prepared.rows)}
  out = {}
  for name, m in splits.items():
    rows = np.asarray([where.get(n, -1) for n in m.names], np.int64)
    present = rows >= 0
    out[name] = split_lib.Split(name, m.subset(present), prepared.images, rows[present])
  return out


# data.source -> a function of the config returning {'train', 'val', 'test'} -> Split.
SOURCES = {
    "phantom": _prepared_splits,
    "nih": _prepared_splits,
    "chestmnist": lambda config: chestmnist.load_splits(config, data_dir(config)),
}


def load_splits(config):
  """Returns {'train', 'val', 'test'} -> Split for `config.data`, from the source it names."""
  if config.data.target not in nih.CLASSES:
    raise nih.DataError(f"data.target {config.data.target!r} is not one of {', '.join(nih.CLASSES)}.")
  if config.data.source not in SOURCES:
    raise nih.DataError(f"Unknown data.source {config.data.source!r}; choose one of {', '.join(SOURCES)}.")
  return SOURCES[config.data.source](config)

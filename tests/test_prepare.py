"""Preparation: bad files counted, reported and left out; colour and 16-bit decoding; strict; kill and resume."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from jaxcxr.data import datasets
from jaxcxr.data import nih
from tests.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


def _names(data_dir):
  return nih.read_labels(nih.find_label_file(data_dir)).names


def _damaged_copy(tiny_data_dir, tmp_path, *, missing=True):
  """A copy of the tiny phantom set with one file of each kind of damage and three colour/16-bit images.

  Returns (data_dir, {kind: image name}, {name: expected (32, 32) uint8 pixels}).
  """
  d = str(tmp_path / "data")
  # The raw data only: other tests may already have prepared the shared tiny set in place.
  shutil.copytree(tiny_data_dir, d, ignore=shutil.ignore_patterns(datasets.PREPARED))
  names = _names(d)
  kinds = ["corrupt", "truncated", "empty", "missing", "rgba", "rgb", "sixteen"]
  picked = dict(zip(kinds, names[5:5 + len(kinds)]))
  path = {k: os.path.join(d, "images", n) for k, n in picked.items()}
  with open(path["corrupt"], "wb") as f:
    f.write(b"this is not a PNG file " * 20)
  with open(path["truncated"], "rb") as f:
    data = f.read()
  with open(path["truncated"], "wb") as f:
    f.write(data[:len(data) // 2])
  open(path["empty"], "wb").close()
  if missing:
    os.remove(path["missing"])
  else:
    del picked["missing"]
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
  alpha = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)  # Alpha must not leak into the pixels.
  Image.fromarray(np.stack([grey, grey, grey, alpha], -1), "RGBA").save(path["rgba"])
  rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  Image.fromarray(rgb, "RGB").save(path["rgb"])
  wide = rng.integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
  wide[0, :3] = (0, 65535, 257)
  Image.fromarray(wide).save(path["sixteen"])
  assert Image.open(path["sixteen"]).mode == "I;16" and Image.open(path["rgba"]).mode == "RGBA"
  luminance = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  expected = {picked["rgba"]: grey, picked["rgb"]: luminance, picked["sixteen"]: wide / 65535.0 * 255.0}
  return d, picked, expected


def _config(data_dir, **data):
  config = tiny_config(data_dir)
  for k, v in data.items():
    config.data[k] = v
  return config


def _pixels(splits, name):
  for s in splits.values():
    hit = np.flatnonzero(s.meta.names == name)
    if len(hit):
      return np.asarray(s.images[s.rows[hit[0]]])
  raise AssertionError(f"{name} is in no split")


def test_bad_files_are_reported_and_left_out_and_colour_decodes(tiny_data_dir, tmp_path):
  d, picked, expected = _damaged_copy(tiny_data_dir, tmp_path)
  splits = datasets.load_splits(_config(d))
  bad = {k: picked[k] for k in ("corrupt", "truncated", "empty", "missing")}
  in_splits = set().union(*(set(s.meta.names) for s in splits.values()))
  assert not set(bad.values()) & in_splits
  assert len(in_splits) == len(_names(d)) - 4

  [report_path] = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(d, datasets.PREPARED))
                   for f in fs if f == datasets.REPORT]
  with open(report_path) as f:
    report = json.load(f)
  assert report["left_out"] == {"missing": 1, "empty": 1, "truncated": 1, "corrupt": 1}
  assert {p["name"]: p["reason"] for p in report["problems"]} == {n: k for k, n in bad.items()}
  assert report["prepared"] == len(in_splits) and report["listed"] == len(_names(d))
  assert report["image_size"] == SIZE and "bilinear" in report["resize_method"].lower()
  assert not os.path.exists(os.path.join(os.path.dirname(report_path), "progress.json"))

  for name, want in expected.items():
    got = _pixels(splits, name).astype(np.float64)
    assert np.abs(got - want).max() <= 1.0, name  # PIL rounds luminance in fixed point.
  sixteen = _pixels(splits, picked["sixteen"])
  assert tuple(sixteen[0, :3]) == (0, 255, 1)
  # The untouched images are the phantom's own pixels.
  other = splits["train"].meta.names[0]
  want = np.asarray(Image.open(os.path.join(d, "images", other)))
  np.testing.assert_array_equal(_pixels(splits, other), want)

  text = datasets.summary(report)
  assert f"Prepared {len(in_splits)} of {len(_names(d))}" in text and "1 truncated" in text


def test_resize_and_grey_passthrough(tmp_path):
  a = np.random.default_rng(1).integers(0, 256, (64, 48), dtype=np.uint8)
  Image.fromarray(a).save(tmp_path / "g.png")
  got, err = datasets.decode(str(tmp_path / "g.png"), 32)
  assert err is None and got.shape == (32, 32) and got.dtype == np.uint8
  # 64 rows -> 32: pairs of rows averaged; 48 columns -> 32: no whole factor, bilinear only.
  want = np.asarray(Image.fromarray(a).reduce((1, 2)).resize((32, 32), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(got, want)


def test_whole_factor_resize_is_the_area_average(tmp_path):
  """1024 -> 256 style: a whole factor averages each k x k box (rounded half up), nothing else."""
  a = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
  Image.fromarray(a).save(tmp_path / "g.png")
  got, err = datasets.decode(str(tmp_path / "g.png"), 16)
  assert err is None
  want = np.floor(a.reshape(16, 4, 16, 4).astype(np.float64).mean((1, 3)) + 0.5)
  np.testing.assert_array_equal(got, want.astype(np.uint8))


def _png(path, a, **save):
  Image.fromarray(a).save(path, format="png", **save)
  return str(path)


@pytest.mark.parametrize("save", [{}, {"compress_level": 0}, {"compress_level": 1}, {"optimize": True}])
def test_libpng_shortcut_decodes_grey_pngs_as_pil_does(tmp_path, save):
  a = np.random.default_rng(3).integers(0, 256, (67, 45), dtype=np.uint8)
  a[:30] = np.linspace(0, 255, 45).astype(np.uint8)  # Smooth rows too, so that PNG's filters vary by row.
  path = _png(tmp_path / "g.png", a, **save)
  with open(path, "rb") as f:
    fast = datasets._decode_grey8_png(f.read())  # pylint: disable=protected-access
  np.testing.assert_array_equal(fast, a)
  got, err = datasets.decode(path, 20)
  want = np.asarray(Image.open(path).resize((20, 20), Image.Resampling.BILINEAR, reducing_gap=1.0))
  assert err is None
  np.testing.assert_array_equal(got, want)


def test_libpng_shortcut_leaves_other_pngs_to_pil(tmp_path):
  grey = np.random.default_rng(4).integers(0, 256, (16, 16), dtype=np.uint8)
  others = [np.stack([grey] * 3, -1), (grey.astype(np.uint16) * 257)]
  for k, a in enumerate(others):
    with open(_png(tmp_path / f"o{k}.png", a), "rb") as f:
      assert datasets._decode_grey8_png(f.read()) is None  # pylint: disable=protected-access
  assert datasets._decode_grey8_png(b"not a png") is None  # pylint: disable=protected-access


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_a_flipped_bit_in_the_pixel_data_is_reported_not_trained_on(tmp_path, where):
  a = np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8)
  path = _png(tmp_path / "g.png", a)
  with open(path, "rb") as f:
    data = bytearray(f.read())
  start = data.index(b"IDAT") + 4 + 2  # Past the chunk type and the zlib header.
  end = data.index(b"IEND") - 8  # Before the IDAT's CRC.
  data[start + int(where * (end - start))] ^= 0x10
  with open(path, "wb") as f:
    f.write(bytes(data))
  got, err = datasets.decode(path, 32)
  assert got is None and err[0] == "corrupt", err


@pytest.mark.parametrize("keep", [4, 30, 60, 0.5])
def test_a_png_cut_anywhere_is_truncated(tmp_path, keep):
  """Cut inside the signature, the header, the pixel data: PIL calls some of these unidentifiable."""
  path = _png(tmp_path / "g.png", np.random.default_rng(6).integers(0, 256, (64, 64), dtype=np.uint8))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:int(keep * len(data)) if keep < 1 else keep])
  got, err = datasets.decode(path, 32)
  assert got is None and err[0] == "truncated", err


def test_strict_fails_naming_every_bad_file(tiny_data_dir, tmp_path):
  d, picked, _ = _damaged_copy(tiny_data_dir, tmp_path, missing=False)
  with pytest.raises(nih.DataError, match="data.strict: 3 of") as e:
    datasets.load_splits(_config(d, strict=True))
  for kind in ("corrupt", "truncated", "empty"):
    assert f"{picked[kind]}: {kind}" in str(e.value)
  # The same folder, prepared without strict, loads; strict again fails from the report.
  assert len(datasets.load_splits(_config(d))["train"])
  with pytest.raises(nih.DataError, match=picked["truncated"]):
    datasets.load_splits(_config(d, strict=True))


def test_strict_fails_on_missing_files_before_decoding(tiny_data_dir, tmp_path):
  d, picked, _ = _damaged_copy(tiny_data_dir, tmp_path)
  with pytest.raises(nih.DataError, match=f"{picked['missing']}: missing"):
    datasets.load_splits(_config(d, strict=True))
  assert not os.path.exists(os.path.join(d, datasets.PREPARED))


def _prepare(d, **kw):
  meta = nih.read_labels(nih.find_label_file(d))
  return datasets.prepare(d, meta, size=SIZE, num_workers=1, chunk_size=64, progress=False, **kw)


def test_killed_preparation_resumes_without_redoing_chunks(tiny_data_dir, tmp_path, monkeypatch):
  d, _, _ = _damaged_copy(tiny_data_dir, tmp_path / "a")
  reference_dir, _, _ = _damaged_copy(tiny_data_dir, tmp_path / "b")
  reference = _prepare(reference_dir)
  real = datasets._decode_chunk
  calls = []

  def dies_after_two(job):
    if len(calls) == 2:
      raise KeyboardInterrupt("killed")
    calls.append(job[1])
    return real(job)

  monkeypatch.setattr(datasets, "_decode_chunk", dies_after_two)
  with pytest.raises(KeyboardInterrupt):
    _prepare(d)
  out_dir = datasets.prepared_dir(d, nih.read_labels(nih.find_label_file(d)), SIZE)
  assert not os.path.exists(os.path.join(out_dir, datasets.INDEX))  # Does not look complete.
  first = list(calls)

  redone = []
  monkeypatch.setattr(datasets, "_decode_chunk", lambda job: redone.append(job[1]) or real(job))
  result = _prepare(d)
  assert not set(first) & set(redone)
  assert sorted(first + redone) == list(range(0, 396, 64))  # 396 images found on disk, chunks of 64.
  np.testing.assert_array_equal(result.rows, reference.rows)
  np.testing.assert_array_equal(result.meta.names, reference.meta.names)
  np.testing.assert_array_equal(np.asarray(result.images)[result.rows],
                                np.asarray(reference.images)[reference.rows])
  strip = lambda r: {k: v for k, v in r.items() if k not in ("directory", "data_dir")}
  assert strip(result.report) == strip(reference.report)
  # A third run reuses the complete folder and decodes nothing.
  redone.clear()
  _prepare(d)
  assert not redone


def test_prepare_cli_prints_counts_and_strict_exits(tiny_data_dir, tmp_path):
  d, picked, _ = _damaged_copy(tiny_data_dir, tmp_path, missing=False)
  cmd = [sys.executable, "-m", "jaxcxr.prepare", "--config=configs/base.py", f"--config.data.dir={d}",
         f"--config.data.image_size={SIZE}", "--notfds"]
  strict = subprocess.run(cmd + ["--strict"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert strict.returncode == 2, strict.stderr
  assert picked["corrupt"] in strict.stderr and "data.strict" in strict.stderr
  ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert "Prepared 397 of 400 listed images" in ok.stdout and "1 corrupt" in ok.stdout


def test_tfds_array_record_export_reads_back_without_tensorflow(tiny_data_dir, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from jaxcxr.data import tfds_builder  # pylint: disable=g-import-not-at-top
  d, picked, _ = _damaged_copy(tiny_data_dir, tmp_path)
  config = _config(d)
  builder = tfds_builder.build(config)
  assert "tensorflow" not in sys.modules
  files = os.listdir(builder.data_dir)
  assert any(".array_record-" in f for f in files), files
  again = tfds.builder_from_directory(builder.data_dir)  # As any other user would open it.
  assert again.info.metadata["resize_method"] == datasets.RESIZE_METHOD
  assert again.info.metadata["image_size"] == SIZE and "bilinear" in again.info.description.lower()
  sources = again.as_data_source()
  splits = datasets.load_splits(config)
  meta = nih.concat(s.meta for s in splits.values())
  by_name = {n: i for i, n in enumerate(meta.names)}
  seen = set()
  for part in ("train_val", "test"):
    src = sources[part]
    for k in range(len(src)):
      ex = src[k]
      name = ex["image_id"].decode()
      i = by_name[name]
      assert ex["image"].shape == (SIZE, SIZE, 1) and ex["image"].dtype == np.uint8
      np.testing.assert_array_equal(ex["image"][..., 0], _pixels(splits, name))
      np.testing.assert_array_equal(ex["labels"], meta.labels[i])
      assert ex["patient_id"] == meta.patients[i] and ex["view"].decode() == meta.views[i]
      assert ex["sex"].decode() == meta.sexes[i] and np.isclose(ex["age"], meta.ages[i])
      seen.add(name)
  assert seen == set(meta.names)  # All prepared images, none of the bad ones.
  assert not seen & {picked[k] for k in ("corrupt", "truncated", "empty", "missing")}
  # Grain reads the data source as it is.
  import grain  # pylint: disable=g-import-not-at-top
  batch = grain.MapDataset.source(sources["test"]).batch(4)[1]
  np.testing.assert_array_equal(batch["image"], np.stack([sources["test"][k]["image"] for k in range(4, 8)]))
  assert batch["labels"].shape == (4, len(nih.CLASSES))
  images = tfds_builder.Images([sources["train_val"], sources["test"]])
  assert images.shape == (len(seen), SIZE, SIZE) and images[np.array([0, 3])].shape == (2, SIZE, SIZE)
  np.testing.assert_array_equal(images[len(sources["train_val"])], sources["test"][0]["image"][..., 0])

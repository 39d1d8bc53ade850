"""data.source='chestmnist': a small synthetic npz in MedMNIST's layout and class order."""

import numpy as np
import pytest

from configs import base
from jaxcxr.data import chestmnist
from jaxcxr.data import datasets
from jaxcxr.data import nih


def test_medmnist_class_order_maps_onto_nih_by_name():
  order = chestmnist.column_order()
  assert sorted(order) == list(range(14))
  assert chestmnist.MEDMNIST_CLASSES[order[nih.CLASSES.index("Effusion")]] == "effusion"
  assert chestmnist.MEDMNIST_CLASSES[order[nih.CLASSES.index("Pleural_Thickening")]] == "pleural thickening"
  assert chestmnist.MEDMNIST_CLASSES[order[nih.CLASSES.index("Hernia")]] == "hernia"


def _write_npz(path, *, size=28, counts=(30, 10, 20), seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, n in zip(("train", "val", "test"), counts):
    arrays[f"{prefix}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    arrays[f"{prefix}_labels"] = (rng.random((n, 14)) < 0.3).astype(np.uint8)
  np.savez(path, **arrays)
  return arrays


def _config(directory, size, split="chestmnist"):
  config = base.get_config()
  config.data.source = "chestmnist"
  config.data.split = split
  config.data.dir = str(directory)
  config.data.image_size = size
  return config


def test_splits_labels_and_images_as_in_the_file(tmp_path):
  arrays = _write_npz(tmp_path / "chestmnist.npz")
  splits = datasets.load_splits(_config(tmp_path, 28))
  hernia, effusion = nih.CLASSES.index("Hernia"), nih.CLASSES.index("Effusion")
  for name, n in (("train", 30), ("val", 10), ("test", 20)):
    s = splits[name]
    assert len(s) == n and s.name == name and s.meta.names[0].startswith(f"chestmnist/{name}/")
    np.testing.assert_array_equal(s.meta.labels[:, hernia], arrays[f"{name}_labels"][:, 13])
    np.testing.assert_array_equal(s.meta.labels[:, effusion], arrays[f"{name}_labels"][:, 2])
    np.testing.assert_array_equal(s.images[s.rows], arrays[f"{name}_images"])
    assert s.images[s.rows[0]].shape == (28, 28) and s.images.dtype == np.uint8
  patients = np.concatenate([s.meta.patients for s in splits.values()])
  assert len(np.unique(patients)) == len(patients)  # No patient ids: one per image.


def test_resized_and_sized_file_preferred(tmp_path):
  _write_npz(tmp_path / "chestmnist.npz")
  big = _write_npz(tmp_path / "chestmnist_64.npz", size=64, seed=1)
  assert chestmnist.find_file(str(tmp_path), 64).endswith("chestmnist_64.npz")
  assert chestmnist.find_file(str(tmp_path), 48).endswith("chestmnist_64.npz")
  assert chestmnist.find_file(str(tmp_path), 28).endswith("chestmnist.npz")
  splits = datasets.load_splits(_config(tmp_path, 32))
  s = splits["test"]
  assert s.images[s.rows].shape == (20, 32, 32)
  # 64 -> 32 px averages each 2 x 2 box (rounded half up).
  want = np.floor(big["test_images"][0].reshape(32, 2, 32, 2).astype(np.float64).mean((1, 3)) + 0.5)
  np.testing.assert_array_equal(s.images[s.rows[0]], want.astype(np.uint8))


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(nih.DataError, match="split=chestmnist"):
    datasets.load_splits(_config(tmp_path, 28, split="official"))
  with pytest.raises(nih.DataError, match="No chestmnist.npz"):
    datasets.load_splits(_config(tmp_path, 28))
  np.savez(tmp_path / "chestmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(nih.DataError, match="'train_labels'"):
    datasets.load_splits(_config(tmp_path, 28))
  np.savez(tmp_path / "chestmnist.npz", train_images=np.array([{"a": 1}], dtype=object))
  with pytest.raises(nih.DataError, match="cannot read"):  # Object arrays would need pickle: refused.
    datasets.load_splits(_config(tmp_path, 28))

"""Label files other than NIH's own: Kaggle's sample_labels.csv, data.label_file, the not-found message."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import hernia
from jaxcxr.data import datasets
from jaxcxr.data import nih

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The header of Kaggle's "Random Sample of NIH Chest X-ray Dataset" (sample_labels.csv).
KAGGLE_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                 "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y")
FINDINGS = ("No Finding", "Hernia", "Effusion|Infiltration", "No Finding", "Pneumothorax", "Atelectasis")


def write_kaggle_sample(directory, *, num_patients=30, per_patient=2, name=nih.SAMPLE_LABEL_FILE, images=False):
  """A Kaggle-format label file (CRLF, ages like '060Y'); with `images`, 32-px PNGs in images/."""
  os.makedirs(directory, exist_ok=True)
  rows = [KAGGLE_HEADER]
  for p in range(num_patients):
    for k in range(per_patient):
      image = f"{p + 1:08d}_{k:03d}.png"
      rows.append(f"{image},{FINDINGS[(p + k) % len(FINDINGS)]},{k},{p + 1},{40 + p:03d}Y,"
                  f"{'MF'[p % 2]},{'PA' if k % 2 else 'AP'},2500,2048,0.143,0.143")
      if images:
        os.makedirs(os.path.join(directory, "images"), exist_ok=True)
        pixels = np.full((48, 48), 20 + 3 * p, np.uint8)
        Image.fromarray(pixels, mode="L").save(os.path.join(directory, "images", image))
  with open(os.path.join(directory, name), "wb") as f:
    f.write(("\r\n".join(rows) + "\r\n").encode())
  return num_patients * per_patient


def test_sample_labels_is_found_and_read(tmp_path):
  n = write_kaggle_sample(str(tmp_path))
  path = nih.find_label_file(str(tmp_path))
  assert os.path.basename(path) == nih.SAMPLE_LABEL_FILE
  meta = nih.read_labels(path)
  assert len(meta) == n and len(np.unique(meta.patients)) == n // 2
  assert meta.ages[0] == 40.0 and meta.ages[-1] == 40.0 + n // 2 - 1  # '040Y' ... read as years.
  assert set(np.unique(meta.views)) == {"AP", "PA"} and set(np.unique(meta.sexes)) == {"M", "F"}
  hernia_rows = [i for i, n_ in enumerate(meta.names) if FINDINGS[(int(n_[:8]) - 1 + int(n_[9:12])) % 6] == "Hernia"]
  assert meta.labels[hernia_rows, nih.CLASSES.index("Hernia")].all()
  assert meta.labels[:, nih.CLASSES.index("Hernia")].sum() == len(hernia_rows) > 0


def test_nih_names_come_first(tmp_path):
  write_kaggle_sample(str(tmp_path))
  write_kaggle_sample(str(tmp_path), name=nih.LABEL_FILE, num_patients=3)
  assert os.path.basename(nih.find_label_file(str(tmp_path))) == nih.LABEL_FILE


def test_label_file_field_names_any_file(tmp_path):
  n = write_kaggle_sample(str(tmp_path), name="my_labels.csv")
  assert nih.find_label_file(str(tmp_path)) is None
  assert nih.read_labels(nih.locate_label_file(str(tmp_path), "my_labels.csv")).names.size == n
  # An absolute path works too, wherever the data folder is.
  other = tmp_path / "elsewhere"
  other.mkdir()
  assert nih.locate_label_file(str(other), str(tmp_path / "my_labels.csv")) == str(tmp_path / "my_labels.csv")
  with pytest.raises(nih.DataError, match="other.csv"):
    nih.locate_label_file(str(tmp_path), "other.csv")


def test_not_found_lists_every_name_searched(tmp_path):
  with pytest.raises(nih.DataError) as e:
    nih.locate_label_file(str(tmp_path))
  for name in nih.LABEL_FILE_NAMES:
    assert name in str(e.value)
  assert "data.label_file" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(nih.DataError, match="not found"):
    nih.locate_label_file(str(tmp_path / "absent"))


def _stats(*args):
  return subprocess.run([sys.executable, "-m", "jaxcxr.stats", "--config=configs/hernia.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_stats_on_kaggle_sample_with_random_split(tmp_path):
  n = write_kaggle_sample(str(tmp_path))
  proc = _stats(f"--config.data.dir={tmp_path}", "--config.data.split=random", "--json")
  assert proc.returncode == 0, proc.stderr
  stats = json.loads(proc.stdout)
  assert os.path.basename(stats["label_file"]) == nih.SAMPLE_LABEL_FILE and stats["split"] == "random"
  table = stats["table"]
  assert set(table) == {"all", "train", "val", "test"}
  assert table["all"]["images"] == n == sum(table[s]["images"] for s in ("train", "val", "test"))
  assert table["all"]["age_median"] is not None


def test_official_split_without_lists_says_so_in_one_line(tmp_path):
  write_kaggle_sample(str(tmp_path))
  proc = _stats(f"--config.data.dir={tmp_path}", "--config.data.split=official")
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert nih.TRAIN_VAL_LIST in lines[0] and "data.split='random'" in lines[0]


def test_training_data_loads_from_kaggle_sample(tmp_path):
  """What training reads: prepared images and a patient-level random split of the sample."""
  n = write_kaggle_sample(str(tmp_path), images=True)
  config = hernia.get_config()
  config.data.dir = str(tmp_path)
  config.data.split = "random"
  config.data.image_size = 32
  splits = datasets.load_splits(config)
  assert sum(len(s.meta) for s in splits.values()) == n
  patients = [set(s.meta.patients.tolist()) for s in splits.values()]
  assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])

"""NIH ChestX-ray14 metadata: the label set, the label file and the official split lists."""

# The 14 findings of ChestX-ray14 in the order every array in jaxcxr uses (alphabetical, as NIH lists them).
CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"
LABEL_FILE = "Data_Entry_2017_v2020.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

import csv
import dataclasses
import gzip
import io
import os

import numpy as np


class DataError(Exception):
  """Bad or missing input data; the message names the file, row or field and what to do."""


@dataclasses.dataclass(frozen=True)
class Metadata:
  """One row per image of the label file. `labels` is (N, 14) uint8 in CLASSES order."""
  names: np.ndarray  # (N,) str, e.g. '00000001_000.png'
  patients: np.ndarray  # (N,) int64
  labels: np.ndarray  # (N, 14) uint8

  def __len__(self):
    return len(self.names)

  def subset(self, idx):
    return Metadata(self.names[idx], self.patients[idx], self.labels[idx])


def _open_text(path):
  if path.endswith(".gz"):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
  return open(path, encoding="utf-8", newline="")


def find_label_file(data_dir):
  """Returns the path of the NIH label file in `data_dir` (plain or gzipped), or None."""
  for name in (LABEL_FILE, LABEL_FILE + ".gz", "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz"):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      return path
  return None


def read_labels(path):
  """Reads an NIH label file: image names, patient ids and the 14 labels, parsed by name."""
  index = {c: i for i, c in enumerate(CLASSES)}
  names, patients, labels = [], [], []
  with _open_text(path) as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader)]
    try:
      col_name, col_labels, col_patient = (header.index(h) for h in ("Image Index", "Finding Labels", "Patient ID"))
    except ValueError:
      raise DataError(f"{path}: header {header} lacks one of 'Image Index', 'Finding Labels', 'Patient ID'.") from None
    for row_no, row in enumerate(reader, start=2):
      if not row:
        continue
      y = np.zeros(len(CLASSES), np.uint8)
      findings = [s.strip() for s in row[col_labels].split("|")]
      for finding in findings:
        if finding == NO_FINDING:
          if len(findings) > 1:
            raise DataError(f"{path} row {row_no}: 'No Finding' together with other labels: {row[col_labels]!r}.")
          continue
        if finding not in index:
          raise DataError(f"{path} row {row_no}: unknown label {finding!r} (known: {', '.join(CLASSES)}, {NO_FINDING}).")
        y[index[finding]] = 1
      names.append(row[col_name].strip())
      patients.append(int(row[col_patient]))
      labels.append(y)
  return Metadata(np.asarray(names), np.asarray(patients, np.int64), np.stack(labels))


def read_list(path):
  """Reads a split list (one image name a line; tolerates CRLF and a missing final newline)."""
  if not os.path.exists(path):
    raise DataError(f"Split list {path} not found; it ships with the NIH release next to the label file.")
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def check_patient_disjoint(splits):
  """Raises DataError if any patient appears in two of `splits` (name -> Metadata)."""
  seen = {}
  for split, meta in splits.items():
    for p in np.unique(meta.patients):
      if p in seen:
        raise DataError(f"Patient {p} is in both the {seen[p]!r} and {split!r} splits.")
      seen[p] = split


def official_split(meta, data_dir, *, val_fraction, seed):
  """NIH's official split, with a seeded patient-grouped validation carve-out from train_val."""
  pos = {n: i for i, n in enumerate(meta.names)}
  def take(list_name):
    names = read_list(os.path.join(data_dir, list_name))
    missing = [n for n in names if n not in pos]
    if missing:
      raise DataError(f"{os.path.join(data_dir, list_name)}: {len(missing)} names not in the label file, "
                      f"e.g. {missing[0]!r}.")
    return np.asarray([pos[n] for n in names], np.int64)
  train_val, test = take(TRAIN_VAL_LIST), take(TEST_LIST)
  patients = np.unique(meta.patients[train_val])
  rng = np.random.default_rng(seed)
  val_patients = rng.choice(patients, size=int(round(val_fraction * len(patients))), replace=False)
  is_val = np.isin(meta.patients[train_val], val_patients)
  splits = {"train": meta.subset(train_val[~is_val]), "val": meta.subset(train_val[is_val]),
            "test": meta.subset(test)}
  check_patient_disjoint(splits)
  return splits


def find_images(data_dir, names):
  """Maps each image name to its path under `images/` or `images_0NN/images/`; absent ones map to None."""
  folders = [os.path.join(data_dir, "images")]
  folders += sorted(os.path.join(data_dir, d, "images") for d in os.listdir(data_dir) if d.startswith("images_"))
  where = {}
  for folder in folders:
    if os.path.isdir(folder):
      for entry in os.scandir(folder):
        where.setdefault(entry.name, entry.path)
  return {n: where.get(n) for n in names}

"""NIH ChestX-ray14 metadata: the label set, the label file, the official and random splits, Table 1."""

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
# Label-file names looked for in data.dir, in this order (data.label_file names any other): the NIH
# releases (2020, then 2017; plain or gzipped), then Kaggle's "Random Sample of NIH Chest X-ray Dataset"
# (5,606 images, columns OriginalImageWidth ... OriginalImagePixelSpacing_y, ages such as '060Y', CRLF),
# which ships no official split lists.
SAMPLE_LABEL_FILE = "sample_labels.csv"
LABEL_FILE_NAMES = (LABEL_FILE, LABEL_FILE + ".gz", "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz",
                    SAMPLE_LABEL_FILE, SAMPLE_LABEL_FILE + ".gz")
# Names `split` accepts (config.data.split).
SPLITS = ("official", "random")

import csv
import dataclasses
import gzip
import io
import math
import os
import re

import numpy as np

from jaxcxr import errors


class DataError(errors.UserError):
  """Bad or missing input data; the message names the file, row or field and what to do."""


@dataclasses.dataclass(frozen=True)
class Metadata:
  """One row per image of the label file. `labels` is (N, 14) uint8 in CLASSES order.

  The per-image fields after `labels` are optional: `Metadata(names, patients, labels)` fills them with
  "unknown" (NaN age, '' sex and view, follow-up -1).
  """
  names: np.ndarray  # (N,) str, e.g. '00000001_000.png'
  patients: np.ndarray  # (N,) int64
  labels: np.ndarray  # (N, 14) uint8
  ages: np.ndarray = None  # (N,) float64, years (months and days converted); NaN where unknown.
  sexes: np.ndarray = None  # (N,) str: 'M', 'F', '' where unknown (other codes kept upper-cased).
  views: np.ndarray = None  # (N,) str: 'PA', 'AP', '' where unknown.
  followups: np.ndarray = None  # (N,) int64 follow-up number; -1 where unknown.

  def __post_init__(self):
    n = len(self.names)
    defaults = {"ages": lambda: np.full(n, np.nan), "sexes": lambda: np.full(n, "", dtype="<U1"),
                "views": lambda: np.full(n, "", dtype="<U2"), "followups": lambda: np.full(n, -1, np.int64)}
    for name, make in defaults.items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, make())
    for f in dataclasses.fields(self):
      if len(getattr(self, f.name)) != n:
        raise ValueError(f"Metadata.{f.name} has {len(getattr(self, f.name))} rows, names has {n}.")

  def __len__(self):
    return len(self.names)

  def subset(self, idx):
    """The rows `idx` (indices or a boolean mask) of every field."""
    return Metadata(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def concat(metas):
  """The rows of several Metadata one after another (e.g. train + val = the official train_val)."""
  metas = list(metas)
  return Metadata(**{f.name: np.concatenate([getattr(m, f.name) for m in metas])
                     for f in dataclasses.fields(Metadata)})


def _open_text(path):
  """Opens a text file for csv: gzip detected by its magic bytes (not the name), UTF-8 with or without a BOM."""
  with open(path, "rb") as f:
    magic = f.read(2)
  raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
  return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def find_label_file(data_dir, label_file=""):
  """Returns the path of the label file in `data_dir`, or None.

  `label_file` (config.data.label_file) names the file, inside `data_dir` or as a path; '' looks for
  LABEL_FILE_NAMES in that order (the NIH releases, plain or gzipped, then Kaggle's sample_labels.csv).
  """
  for name in label_file_candidates(label_file):
    path = os.path.join(data_dir, os.path.expanduser(name))  # An absolute `name` stays itself.
    if os.path.isfile(path):
      return path
  return None


def label_file_candidates(label_file=""):
  """The names find_label_file tries, in order: `label_file` alone when given, else LABEL_FILE_NAMES."""
  return (label_file,) if label_file else LABEL_FILE_NAMES


def locate_label_file(data_dir, label_file=""):
  """find_label_file, or a DataError naming the folder and every name searched."""
  path = find_label_file(data_dir, label_file) if os.path.isdir(data_dir) else None
  if path is None:
    if not os.path.isdir(data_dir):
      raise DataError(f"Data folder {data_dir} not found (data.dir); it should hold the label file "
                      f"({' or '.join(label_file_candidates(label_file))}).")
    tried = ", ".join(label_file_candidates(label_file))
    hint = "" if label_file else "; set data.label_file to use a file with another name"
    raise DataError(f"No label file in {data_dir}: looked for {tried}{hint}.")
  return path


# Label-file columns, found by name: header names are compared lower-cased with everything but letters and
# digits removed, so 'Patient ID', 'patient_id' and 'PatientID' are one column. Only the first three are
# required; the others default to "unknown".
_COLUMNS = {
    "name": ("imageindex", "imagename", "image", "filename"),
    "labels": ("findinglabels", "findings", "labels"),
    "patient": ("patientid", "patient"),
    "followup": ("followup", "followupnumber", "followupno"),
    "age": ("patientage", "age"),
    "sex": ("patientgender", "patientsex", "gender", "sex"),
    "view": ("viewposition", "view", "projection"),
}
_REQUIRED = {"name": "Image Index", "labels": "Finding Labels", "patient": "Patient ID"}
# Spellings of other NIH files (BBox_List_2017.csv says 'Infiltrate') that mean one of CLASSES.
_LABEL_ALIASES = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}
_AGE_UNITS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}
_MISSING = ("", "na", "n/a", "nan", "none", "?")
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


def _expand_header(header):
  """Splits a quoted 'OriginalImage[Width,Height]' header field into one field per bracketed name.

  NIH's own header is unquoted, so csv already splits it in two ('OriginalImage[Width', 'Height]') and the
  row values line up; a copy that quotes it would otherwise leave every later column off by one.
  """
  out = []
  for h in header:
    m = re.fullmatch(r"(.*)\[(.*,.*)\]", h)
    out += [f"{m.group(1)}[{part.strip()}]" for part in m.group(2).split(",")] if m else [h]
  return out


def _columns(path, header):
  """Maps each known column to its index in `header` (first match wins); DataError if a required one lacks."""
  keys = [re.sub(r"[^a-z0-9]", "", h.lower()) for h in header]
  where = {}
  for column, aliases in _COLUMNS.items():
    for alias in aliases:
      if alias in keys:
        where[column] = keys.index(alias)
        break
  missing = [title for column, title in _REQUIRED.items() if column not in where]
  if missing:
    found = ", ".join(repr(h) for h in header if h) or "none"
    raise DataError(f"{path}: no column {' or '.join(repr(m) for m in missing)} in the header; the columns found "
                    f"are {found}. Is this NIH's Data_Entry_2017 label file?")
  return where


def _age_years(text):
  """'57', '060Y', '006M', '010D' (or '3W') -> age in years; NaN if empty; ValueError if unreadable."""
  s = text.strip()
  if s.lower() in _MISSING:
    return math.nan
  scale = _AGE_UNITS.get(s[-1].upper())
  value = float(s[:-1] if scale else s) * (scale or 1.0)
  if not math.isfinite(value) or value < 0:
    raise ValueError(s)
  return value


def read_labels(path):
  """Reads an NIH label file into Metadata: names, patients, the 14 labels (by name), age, sex, view.

  Survives every known variant of the file: the 2017 and 2020 NIH releases and Kaggle copies (unquoted
  'OriginalImage[Width,Height]' headers that csv splits in two, a trailing empty column, 'Patient Gender' or
  'Patient Sex', ages such as '060Y' / '006M' / '010D', other width/height/spacing names, CRLF, a UTF-8 BOM,
  gzip). Columns are found by name, so their order and the number of extra columns do not matter.
  """
  index = {c: i for i, c in enumerate(CLASSES)}
  index.update({a: index[c] for a, c in _LABEL_ALIASES.items()})
  parsed_labels, parsed_ages = {}, {}  # Memos: ~800 distinct label strings and ~100 distinct ages.

  def parse_labels(row_no, text):
    if text not in parsed_labels:
      findings = [s.strip() for s in text.split("|") if s.strip()]
      if not findings:
        raise DataError(f"{path} row {row_no}: empty 'Finding Labels' (write {NO_FINDING!r} for none).")
      if NO_FINDING in findings and len(findings) > 1:
        raise DataError(f"{path} row {row_no}: {NO_FINDING!r} together with other labels: {text!r}.")
      unknown = [f for f in findings if f != NO_FINDING and f not in index]
      if unknown:
        raise DataError(f"{path} row {row_no}: unknown label {unknown[0]!r} in {text!r} "
                        f"(known: {', '.join(CLASSES)}, {NO_FINDING}).")
      parsed_labels[text] = sorted({index[f] for f in findings if f != NO_FINDING})
    return parsed_labels[text]

  def parse_age(row_no, text):
    if text not in parsed_ages:
      try:
        parsed_ages[text] = _age_years(text)
      except ValueError:
        raise DataError(f"{path} row {row_no}: unreadable age {text!r} (expected e.g. 57, 060Y, 006M or 010D)."
                        ) from None
    return parsed_ages[text]

  def parse_int(row_no, text, what, missing=None):
    s = text.strip()
    if missing is not None and s.lower() in _MISSING:
      return missing
    try:
      return int(s)
    except ValueError:
      raise DataError(f"{path} row {row_no}: {what} {text!r} is not a whole number.") from None

  names, patients, label_rows, ages, sexes, views, followups = [], [], [], [], [], [], []
  first_row = {}  # Image name -> its row number, to report duplicates.
  try:
    with _open_text(path) as f:
      reader = csv.reader(f)
      header = next(reader, None)
      if header is None:
        raise DataError(f"{path}: the file is empty; expected NIH's label file with a header row.")
      header = _expand_header([h.strip() for h in header])
      col = _columns(path, header)
      need = max(col.values()) + 1
      get = {c: (lambda row, i=i: row[i]) for c, i in col.items()}
      blank = lambda row: ""  # A column the file lacks.
      age_of, sex_of, view_of, followup_of = (get.get(c, blank) for c in ("age", "sex", "view", "followup"))
      for row_no, row in enumerate(reader, start=2):  # Row 1 is the header.
        if not any(field.strip() for field in row):
          continue
        if len(row) < need:
          raise DataError(f"{path} row {row_no}: {len(row)} fields, but the header puts "
                          f"{header[need - 1]!r} in field {need}.")
        name = row[col["name"]].strip()
        if not name:
          raise DataError(f"{path} row {row_no}: empty 'Image Index'.")
        if name in first_row:
          raise DataError(f"{path}: image {name!r} is listed twice (rows {first_row[name]} and {row_no}).")
        first_row[name] = row_no
        names.append(name)
        patients.append(parse_int(row_no, row[col["patient"]], "Patient ID"))
        label_rows.append(parse_labels(row_no, row[col["labels"]]))
        ages.append(parse_age(row_no, age_of(row)))
        sex = sex_of(row).strip()
        sexes.append(_SEX.get(sex.lower(), sex.upper()))
        views.append(view_of(row).strip().upper())
        followups.append(parse_int(row_no, followup_of(row), "Follow-up #", missing=-1))
  except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{path}: cannot read the label file ({type(e).__name__}: {e}).") from None

  if not names:
    raise DataError(f"{path}: no image rows after the header.")
  labels = np.zeros((len(names), len(CLASSES)), np.uint8)
  rows = np.repeat(np.arange(len(names)), [len(y) for y in label_rows])
  labels[rows, [c for y in label_rows for c in y]] = 1
  return Metadata(np.asarray(names), np.asarray(patients, np.int64), labels, ages=np.asarray(ages, np.float64),
                  sexes=np.asarray(sexes), views=np.asarray(views), followups=np.asarray(followups, np.int64))


def read_list(path):
  """Reads a split list (one image name a line; tolerates CRLF, a BOM, gzip and a missing final newline)."""
  if not os.path.exists(path):
    raise DataError(f"Split list {path} not found: data.split='official' needs NIH's {TRAIN_VAL_LIST} and "
                    f"{TEST_LIST} next to the label file (Kaggle's {SAMPLE_LABEL_FILE} has none); use "
                    "data.split='random' (a patient-level 70/10/20 split) or add the lists.")
  try:
    with _open_text(path) as f:
      return [line.strip() for line in f if line.strip()]
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read the split list ({type(e).__name__}: {e}).") from None


def check_patient_disjoint(splits):
  """Raises DataError if any patient appears in two of `splits` (name -> Metadata)."""
  seen = {}
  for split_name, meta in splits.items():
    for p in np.unique(meta.patients):
      if p in seen:
        raise DataError(f"Patient {p} is in both the {seen[p]!r} and {split_name!r} splits.")
      seen[p] = split_name


def _quotas(n, shares):
  """Target-positive patients per part: round(share x n) for every part after the first (at least one where
  the share is positive and n allows one in each such part), the first part takes the rest."""
  quota = np.zeros(len(shares), np.int64)
  positive = [j for j in range(1, len(shares)) if shares[j] > 0]
  for j in range(1, len(shares)):
    want = int(round(shares[j] * n))
    if shares[j] > 0 and n >= len(positive) + (shares[0] > 0):
      want = max(want, 1)
    quota[j] = min(want, n - quota.sum())
  quota[0] = n - quota.sum()
  return quota


def stratified_parts(meta, *, shares, target, seed, candidates=256):
  """Deals the patients of `meta` out to len(shares) parts, stratified by label; returns each image's part.

  Patient-grouped multi-label stratification in two steps:
  1. Patients carrying `target` (a CLASSES name; None skips this step): part j > 0 gets exactly
     round(shares[j] x their number) of them (at least one when there are enough), part 0 the rest. Of
     `candidates` seeded random deals with these counts, the one whose target-positive image counts are
     closest to shares x the total is kept.
  2. Every other patient, by iterative stratification (Sechidis et al. 2011) on image counts: patients are
     taken in order of their rarest label (images with no finding count as a label of their own; random
     order within a label) and each goes to the part that still lacks the largest share of that label's
     images, ties broken by the part lacking the largest share of its patients, then at random.
  So every part holds about its share of the patients and of every label's positive images.

  Args:
    meta: the Metadata to split.
    shares: the parts' shares (non-negative, summing to 1), e.g. (0.9, 0.1) for train and validation.
    target: the class name whose positive patients are dealt out by exact counts, or None.
    seed: seed of the deal (config.data.split_seed).
    candidates: random deals of the target's patients to choose from.

  Returns:
    (N,) int64 part index of every image of `meta`.
  """
  shares = np.asarray(shares, np.float64)
  patients, inverse = np.unique(meta.patients, return_inverse=True)
  inverse = inverse.reshape(-1)
  n_patients = len(patients)
  # Per patient: positive images of each class, then images with no finding.
  columns = np.concatenate([meta.labels, (meta.labels.sum(1) == 0)[:, None]], axis=1).astype(np.int64)
  counts = np.zeros((n_patients, columns.shape[1]), np.int64)
  np.add.at(counts, inverse, columns)
  rng = np.random.default_rng(seed)
  part = np.full(n_patients, -1, np.int64)

  if target is not None:  # Step 1: exact counts of target-positive patients.
    t = CLASSES.index(target)
    holders = np.flatnonzero(counts[:, t] > 0)
    bounds = np.cumsum(_quotas(len(holders), shares))[:-1]
    want = shares * counts[holders, t].sum()
    best, best_cost = None, np.inf
    for _ in range(candidates):
      groups = np.split(rng.permutation(holders), bounds)
      cost = np.abs([counts[g, t].sum() for g in groups] - want).sum()
      if cost < best_cost:
        best, best_cost = groups, cost
    for j, g in enumerate(best):
      part[g] = j

  # Step 2: iterative stratification of the rest. `lack` is what each part still needs (images per column,
  # patients), relative to what it needs in all; parts with share 0 never receive anyone.
  total = counts.sum(0).astype(np.float64)
  need = np.maximum(shares[:, None] * total, 1e-12)
  need_p = np.maximum(shares * n_patients, 1e-12)
  lack = shares[:, None] * total
  lack_p = shares * n_patients
  for j in range(len(shares)):
    lack[j] -= counts[part == j].sum(0)
    lack_p[j] -= (part == j).sum()
  rest = np.flatnonzero(part < 0)
  rank = np.argsort(np.argsort(total, kind="stable"), kind="stable")  # Rarest column first.
  rest = rest[rng.permutation(len(rest))]
  rarest = np.where(counts[rest] > 0, rank, len(rank)).min(1)  # Every patient has at least one image.
  order = rest[np.argsort(rarest, kind="stable")]
  column = np.argsort(rank)[np.sort(rarest, kind="stable")]
  open_parts = shares > 0
  ties = rng.random((len(order), len(shares)))
  for i, (p, c) in enumerate(zip(order.tolist(), column.tolist())):
    key = np.where(open_parts, lack[:, c] / need[:, c], -np.inf)
    key_p = lack_p / need_p
    j = int(np.lexsort((ties[i], key_p, key))[-1])  # Largest key, then key_p, then random.
    part[p] = j
    lack[j] -= counts[p]
    lack_p[j] -= 1
  return part[inverse]


def official_split(meta, data_dir, *, val_fraction, seed, target=None):
  """NIH's official split, with a seeded, patient-grouped, stratified validation carve-out from train_val.

  The carve-out (`stratified_parts` with shares (1 - val_fraction, val_fraction)) holds about val_fraction of
  the train_val patients and of every label's positive images, and round(val_fraction x the patients
  carrying `target`) of those (at least one); `seed` is config.data.split_seed.
  """
  pos = {n: i for i, n in enumerate(meta.names)}
  def take(list_name):
    names = read_list(os.path.join(data_dir, list_name))
    missing = [n for n in names if n not in pos]
    if missing:
      raise DataError(f"{os.path.join(data_dir, list_name)}: {len(missing)} names not in the label file, "
                      f"e.g. {missing[0]!r}.")
    return np.asarray([pos[n] for n in names], np.int64)
  train_val, test = take(TRAIN_VAL_LIST), take(TEST_LIST)
  is_val = stratified_parts(meta.subset(train_val), shares=(1.0 - val_fraction, val_fraction), target=target,
                            seed=seed) == 1
  splits = {"train": meta.subset(train_val[~is_val]), "val": meta.subset(train_val[is_val]),
            "test": meta.subset(test)}
  check_patient_disjoint(splits)
  return splits


def random_split(meta, *, seed, fractions=(0.7, 0.1, 0.2), target=None):
  """A seeded patient-level split into {'train', 'val', 'test'} (the CheXNet-style 70/10/20 by default).

  `fractions` are shares of patients and of every label's positive images; patients are dealt out whole by
  `stratified_parts` (with `target`'s positive patients in exact proportions), so each split's share of
  images is close to its fraction. Rows keep the label file's order. `seed` is config.data.split_seed.
  """
  fractions = tuple(float(x) for x in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
    raise DataError(f"random split fractions {fractions} must be three non-negative shares (train, val, test) "
                    "that sum to 1.")
  per_image = stratified_parts(meta, shares=fractions, target=target, seed=seed)
  splits = {name: meta.subset(np.flatnonzero(per_image == k)) for k, name in enumerate(("train", "val", "test"))}
  check_patient_disjoint(splits)
  return splits


def split(meta, data_dir, *, name, val_fraction, seed, target):
  """The split `name` (config.data.split) of `meta`: {'train', 'val', 'test'} -> Metadata.

  'official': NIH's train_val_list.txt / test_list.txt in `data_dir`, with `val_fraction` of the train_val
  patients carved out for validation. 'random': the seeded patient-level 70/10/20 split CheXNet used
  (`val_fraction` and `data_dir` are not read). Both are stratified by label, with `target`'s (a CLASSES
  name, config.data.target) positive patients dealt out in exact proportions; `seed` is
  config.data.split_seed.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise DataError(f"data.val_fraction {val_fraction} must be in [0, 1).")
  if target is not None and target not in CLASSES:
    raise DataError(f"data.target {target!r} is not one of {', '.join(CLASSES)}.")
  if name == "official":
    return official_split(meta, data_dir, val_fraction=val_fraction, seed=seed, target=target)
  if name == "random":
    return random_split(meta, seed=seed, target=target)
  raise DataError(f"Unknown data.split {name!r}; choose one of {', '.join(repr(s) for s in SPLITS)}.")


def describe_split(splits, *, target):
  """What each part of `splits` (name -> Metadata) holds of `target`, for logs and reports.

  Returns name -> {images, patients, target_images, target_patients, target_prevalence (target images /
  images; None when empty)}: plain Python numbers, ready for json.dumps.
  """
  t = CLASSES.index(target)
  out = {}
  for name, m in splits.items():
    carries = m.labels[:, t] > 0
    out[name] = {"images": len(m), "patients": int(len(np.unique(m.patients))),
                 "target_images": int(carries.sum()), "target_patients": int(len(np.unique(m.patients[carries]))),
                 "target_prevalence": float(carries.mean()) if len(m) else None}
  return out


def table1(splits):
  """Table 1 of the dataset for `splits` (name -> Metadata): a dict name -> statistics of that split.

  Each entry: images, patients, positives and prevalence (positives / images) per class in CLASSES order,
  no_finding (images with none of the 14 labels) and its prevalence, sexes and views (counts per code) and
  age_median (years). Plain Python numbers, ready for json.dumps; prevalences are None for an empty split.
  """
  out = {}
  for name, m in splits.items():
    n = len(m)
    positives = m.labels.sum(axis=0, dtype=np.int64)
    no_finding = int((m.labels.sum(axis=1) == 0).sum())
    ages = m.ages[~np.isnan(m.ages)]
    out[name] = {
        "images": n,
        "patients": int(len(np.unique(m.patients))),
        "positives": {c: int(p) for c, p in zip(CLASSES, positives)},
        "prevalence": {c: (float(p) / n if n else None) for c, p in zip(CLASSES, positives)},
        "no_finding": no_finding,
        "no_finding_prevalence": no_finding / n if n else None,
        "sexes": {str(k): int(v) for k, v in zip(*np.unique(m.sexes, return_counts=True))},
        "views": {str(k): int(v) for k, v in zip(*np.unique(m.views, return_counts=True))},
        "age_median": float(np.median(ages)) if len(ages) else None,
    }
  return out


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


def class_name(label):
  """The name in CLASSES that `label` means (BBox_List_2017.csv's 'Infiltrate' -> 'Infiltration'), or None."""
  label = label.strip()
  label = _LABEL_ALIASES.get(label, label)
  return label if label in CLASSES else None

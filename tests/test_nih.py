"""NIH metadata: the reader on the real label file and on every known variant, the splits, Table 1, the stats CLI."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcxr.data import nih

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH_DIR = os.path.join(ROOT, "..", "shared", "nih")
real = pytest.mark.skipif(not os.path.isdir(NIH_DIR), reason="real NIH metadata (../shared/nih) absent")

# NIH's published positives per class in the 112,120-image label file.
PUBLISHED = {"Atelectasis": 11_559, "Cardiomegaly": 2_776, "Consolidation": 4_667, "Edema": 2_303,
             "Effusion": 13_317, "Emphysema": 2_516, "Fibrosis": 1_686, "Hernia": 227, "Infiltration": 19_894,
             "Mass": 5_782, "Nodule": 6_331, "Pleural_Thickening": 3_385, "Pneumonia": 1_431,
             "Pneumothorax": 5_302}
# Per-split positives on the official split (../shared/nih/README.md), in CLASSES order, then No Finding.
OFFICIAL = {
    "train_val": [8_280, 1_707, 2_852, 1_378, 8_659, 1_423, 1_251, 141, 13_782, 4_034, 4_708, 2_242, 876, 2_637,
                  50_500],
    "test": [3_279, 1_069, 1_815, 925, 4_658, 1_093, 435, 86, 6_112, 1_748, 1_623, 1_143, 555, 2_665, 9_861],
}
HEADER_2020 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


@pytest.fixture(scope="module")
def meta():
  if not os.path.isdir(NIH_DIR):
    pytest.skip("real NIH metadata (../shared/nih) absent")
  return nih.read_labels(nih.find_label_file(NIH_DIR))


@pytest.fixture(scope="module")
def official(meta):
  return nih.official_split(meta, NIH_DIR, val_fraction=0.1, seed=0, target="Hernia")


def _counts(m):
  return [int(x) for x in m.labels.sum(0)] + [int((m.labels.sum(1) == 0).sum())]


# ----------------------------------------------------------------------------------------------- real data


@real
def test_real_label_file_counts(meta):
  assert len(meta) == 112_120
  assert len(np.unique(meta.patients)) == 30_805
  assert dict(zip(nih.CLASSES, meta.labels.sum(0).tolist())) == PUBLISHED
  assert int((meta.labels.sum(1) == 0).sum()) == 60_361
  assert meta.labels.dtype == np.uint8 and meta.labels.shape == (112_120, 14)
  assert set(np.unique(meta.sexes)) == {"M", "F"} and set(np.unique(meta.views)) == {"PA", "AP"}
  assert not np.isnan(meta.ages).any() and 0 <= meta.ages.min() and meta.ages.max() < 120
  assert meta.names[0] == "00000001_000.png" and meta.patients[0] == 1 and meta.ages[0] == 57.0
  assert meta.followups[1] == 1


@real
def test_official_split_matches_published_table(meta, official):
  train, val, test = official["train"], official["val"], official["test"]
  train_val = nih.concat([train, val])
  assert (len(train_val), len(np.unique(train_val.patients))) == (86_524, 28_008)
  assert (len(test), len(np.unique(test.patients))) == (25_596, 2_797)
  assert _counts(train_val) == OFFICIAL["train_val"]
  assert _counts(test) == OFFICIAL["test"]
  assert int(test.labels[:, nih.CLASSES.index("Hernia")].sum()) == 86
  assert len(train) + len(val) + len(test) == len(meta)


@real
def test_official_val_carve_out_is_patient_disjoint(official):
  nih.check_patient_disjoint(official)
  val_p, train_p = set(official["val"].patients.tolist()), set(official["train"].patients.tolist())
  assert not val_p & train_p
  assert abs(len(val_p) / 28_008 - 0.1) < 0.005  # About val_fraction of the patients (stratified deal).
  assert abs(len(official["val"]) / 86_524 - 0.1) < 0.005
  again = nih.official_split(nih.concat(list(official.values())), NIH_DIR, val_fraction=0.1, seed=0,
                             target="Hernia")
  assert set(again["val"].names.tolist()) == set(official["val"].names.tolist())
  other = nih.official_split(nih.concat(list(official.values())), NIH_DIR, val_fraction=0.1, seed=1,
                             target="Hernia")
  assert set(other["val"].names.tolist()) != set(official["val"].names.tolist())


@real
@pytest.mark.parametrize("split_seed", range(5))
def test_official_val_carve_out_is_stratified(meta, split_seed):
  s = nih.official_split(meta, NIH_DIR, val_fraction=0.1, seed=split_seed, target="Hernia")
  d = nih.describe_split(s, target="Hernia")
  # train_val holds 141 Hernia images of 102 patients: round(0.1 x 102) = 10 patients go to validation.
  assert d["train"]["target_patients"] + d["val"]["target_patients"] == 102
  assert d["val"]["target_patients"] == 10
  assert d["val"]["target_images"] >= 10
  ratio = d["val"]["target_prevalence"] / d["train"]["target_prevalence"]
  assert 0.7 <= ratio <= 1.3, ratio
  # Every other label's prevalence in validation is close to train's.
  ratios = s["val"].labels.mean(0) / s["train"].labels.mean(0)
  assert np.all(np.abs(ratios - 1) < 0.1), dict(zip(nih.CLASSES, ratios.round(3)))


@real
def test_random_split_on_real_data(meta):
  splits = nih.random_split(meta, seed=0, target="Hernia")
  nih.check_patient_disjoint(splits)
  shares = [len(splits[k]) / len(meta) for k in ("train", "val", "test")]
  assert np.allclose(shares, (0.7, 0.1, 0.2), atol=0.01), shares
  assert sum(len(s) for s in splits.values()) == len(meta)
  # Hernia: 227 images of 134 patients; round(0.1 x 134) = 13 and round(0.2 x 134) = 27 patients.
  d = nih.describe_split(splits, target="Hernia")
  assert [d[k]["target_patients"] for k in ("train", "val", "test")] == [94, 13, 27]
  for k in ("val", "test"):
    assert 0.7 <= d[k]["target_prevalence"] / d["train"]["target_prevalence"] <= 1.3


# ------------------------------------------------------------------------------------ synthetic variants


def _write(path, lines, *, newline="\n", bom=False, gz=False, trailing_newline=True):
  text = newline.join(lines) + (newline if trailing_newline else "")
  data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
  if gz:
    data = gzip.compress(data)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


ROWS_2020 = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Effusion|Atelectasis,1,1,58,M,AP,2048,2500,0.168,0.168",
    "00000002_000.png,No Finding,0,2,81,F,PA,2500,2048,0.171,0.171",
]


def _check_standard(m):
  assert m.names.tolist() == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
  assert m.patients.tolist() == [1, 1, 2]
  y = {n: [nih.CLASSES[j] for j in np.flatnonzero(row)] for n, row in zip(m.names, m.labels)}
  assert y == {"00000001_000.png": ["Cardiomegaly"], "00000001_001.png": ["Atelectasis", "Effusion"],
               "00000002_000.png": []}
  assert m.sexes.tolist() == ["M", "M", "F"] and m.views.tolist() == ["PA", "AP", "PA"]


def test_2020_form(tmp_path):
  m = nih.read_labels(_write(tmp_path / "a.csv", [HEADER_2020] + ROWS_2020))
  _check_standard(m)
  assert m.ages.tolist() == [57.0, 58.0, 81.0] and m.followups.tolist() == [0, 1, 0]


def test_2017_trailing_empty_column_crlf(tmp_path):
  lines = [HEADER_2020 + ","] + [r + "," for r in ROWS_2020]
  _check_standard(nih.read_labels(_write(tmp_path / "b.csv", lines, newline="\r\n")))


def test_kaggle_sex_column_age_units_other_size_names(tmp_path):
  header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
            "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y")
  rows = [r.replace(",57,", ",060Y,").replace(",58,", ",006M,").replace(",81,", ",010D,") for r in ROWS_2020]
  m = nih.read_labels(_write(tmp_path / "c.csv", [header] + rows, newline="\r\n"))
  _check_standard(m)
  assert np.allclose(m.ages, [60.0, 0.5, 10 / 365.25])


def test_quoted_bracket_header_and_reordered_columns(tmp_path):
  # Columns by name, not position: patient first, labels last, size headers quoted into one field each.
  header = ('Patient ID,Image Index,"OriginalImage[Width,Height]",Patient Gender,View Position,'
            "Patient Age,Finding Labels")
  rows = ["1,00000001_000.png,2682,2749,M,PA,57,Cardiomegaly",
          "1,00000001_001.png,2048,2500,M,AP,58,Effusion|Atelectasis",
          "2,00000002_000.png,2500,2048,F,PA,81,No Finding"]
  _check_standard(nih.read_labels(_write(tmp_path / "d.csv", [header] + rows)))


@pytest.mark.parametrize("name", ["e.csv.gz", "e.csv"])  # gzip is recognised by content, not by name.
def test_bom_gzip_no_final_newline(tmp_path, name):
  path = _write(tmp_path / name, [HEADER_2020] + ROWS_2020, bom=True, gz=True, trailing_newline=False)
  _check_standard(nih.read_labels(path))


def test_bom_plain_and_blank_lines(tmp_path):
  path = _write(tmp_path / "f.csv", [HEADER_2020, ROWS_2020[0], "", ROWS_2020[1], ROWS_2020[2], ""], bom=True)
  _check_standard(nih.read_labels(path))


def test_unknown_label_names_file_row_and_value(tmp_path):
  rows = ROWS_2020[:1] + [ROWS_2020[1].replace("Effusion", "Pneumonitis")] + ROWS_2020[2:]
  path = _write(tmp_path / "g.csv", [HEADER_2020] + rows)
  with pytest.raises(nih.DataError, match=r"g\.csv row 3: unknown label 'Pneumonitis'"):
    nih.read_labels(path)


def test_no_finding_with_another_label(tmp_path):
  rows = ROWS_2020[:2] + [ROWS_2020[2].replace("No Finding", "No Finding|Mass")]
  with pytest.raises(nih.DataError, match=r"row 4: 'No Finding' together with other labels: 'No Finding\|Mass'"):
    nih.read_labels(_write(tmp_path / "h.csv", [HEADER_2020] + rows))


def test_missing_column_names_the_columns_found(tmp_path):
  header = HEADER_2020.replace("Finding Labels", "Findings Text")
  with pytest.raises(nih.DataError, match=r"i\.csv: no column 'Finding Labels'.*'Findings Text'.*'Patient ID'"):
    nih.read_labels(_write(tmp_path / "i.csv", [header] + ROWS_2020))


@pytest.mark.parametrize("bad_row, match", [
    ("00000003_000.png,Mass,0,3,sixty,M,PA,1,1,1,1", r"row 5: unreadable age 'sixty'"),
    ("00000003_000.png,Mass,0,x3,60,M,PA,1,1,1,1", r"row 5: Patient ID 'x3'"),
    ("00000001_000.png,Mass,0,3,60,M,PA,1,1,1,1", r"'00000001_000.png' is listed twice \(rows 2 and 5\)"),
    ("00000003_000.png,Mass", r"row 5: 2 fields"),
    ("00000003_000.png,,0,3,60,M,PA,1,1,1,1", r"row 5: empty 'Finding Labels'"),
])
def test_bad_rows(tmp_path, bad_row, match):
  with pytest.raises(nih.DataError, match=match):
    nih.read_labels(_write(tmp_path / "j.csv", [HEADER_2020] + ROWS_2020 + [bad_row]))


def test_unreadable_files(tmp_path):
  with pytest.raises(nih.DataError, match="empty"):
    nih.read_labels(_write(tmp_path / "k.csv", [], trailing_newline=False))
  with open(tmp_path / "l.csv.gz", "wb") as f:
    f.write(b"\x1f\x8bnot really gzip")
  with pytest.raises(nih.DataError, match=r"l\.csv\.gz: cannot read"):
    nih.read_labels(str(tmp_path / "l.csv.gz"))


def test_metadata_defaults_and_subset():
  m = nih.Metadata(np.asarray(["a.png", "b.png"]), np.asarray([1, 2]), np.zeros((2, 14), np.uint8))
  assert np.isnan(m.ages).all() and m.sexes.tolist() == ["", ""] and m.followups.tolist() == [-1, -1]
  s = m.subset(np.asarray([1]))
  assert s.names.tolist() == ["b.png"] and len(s.ages) == len(s.sexes) == len(s.views) == 1 and len(s) == 1
  assert len(nih.concat([m, s])) == 3


# ---------------------------------------------------------------------------------------- random split


def _synthetic(n_patients=3000, seed=1):
  rng = np.random.default_rng(seed)
  per = rng.geometric(0.3, n_patients)  # 1 to ~30 images per patient, like NIH's skew.
  patients = np.repeat(np.arange(1, n_patients + 1), per)
  names = np.asarray([f"{p:08d}_{i:03d}.png" for p, k in zip(range(1, n_patients + 1), per) for i in range(k)])
  labels = (rng.random((len(names), 14)) < 0.05).astype(np.uint8)
  return nih.Metadata(names, patients, labels)


def test_random_split_fractions_disjoint_deterministic():
  m = _synthetic()
  a = nih.random_split(m, seed=3)
  nih.check_patient_disjoint(a)
  assert sum(len(s) for s in a.values()) == len(m)
  assert np.allclose([len(a[k]) / len(m) for k in ("train", "val", "test")], (0.7, 0.1, 0.2), atol=0.01)
  b, c = nih.random_split(m, seed=3), nih.random_split(m, seed=4)
  assert all(a[k].names.tolist() == b[k].names.tolist() for k in a)
  assert a["test"].names.tolist() != c["test"].names.tolist()
  d = nih.random_split(m, seed=3, fractions=(0.5, 0.0, 0.5))
  assert len(d["val"]) == 0 and abs(len(d["train"]) / len(m) - 0.5) < 0.01


def test_stratified_parts_exact_target_patients_and_shares():
  m = _synthetic(4000, seed=2)
  target = nih.CLASSES.index("Hernia")
  rare = np.random.default_rng(0).random(len(m)) < 0.004  # A rare target: a few dozen patients.
  m.labels[:, target] = rare
  holders = len(np.unique(m.patients[rare]))
  part = nih.stratified_parts(m, shares=(0.75, 0.1, 0.15), target="Hernia", seed=0)
  got = [len(np.unique(m.patients[rare & (part == j)])) for j in range(3)]
  assert got == [holders - round(0.1 * holders) - round(0.15 * holders), round(0.1 * holders),
                 round(0.15 * holders)]
  for j, share in enumerate((0.75, 0.1, 0.15)):
    assert abs(len(np.unique(m.patients[part == j])) / 4000 - share) < 0.01
    assert abs((part == j).mean() - share) < 0.01
    # Every label's positives split in about the shares (the synthetic labels have ~500 positives each).
    np.testing.assert_allclose(m.labels[part == j].sum(0) / m.labels.sum(0), share, atol=0.03)
  # Patients are never divided; the deal is a function of the seed.
  for p in np.unique(m.patients):
    assert len(np.unique(part[m.patients == p])) == 1
  np.testing.assert_array_equal(part, nih.stratified_parts(m, shares=(0.75, 0.1, 0.15), target="Hernia", seed=0))
  assert not np.array_equal(part, nih.stratified_parts(m, shares=(0.75, 0.1, 0.15), target="Hernia", seed=1))


def test_stratified_parts_few_target_patients_still_reach_every_part():
  m = _synthetic(300, seed=3)
  target = nih.CLASSES.index("Hernia")
  m.labels[:, target] = 0
  m.labels[np.isin(m.patients, [5, 17, 40, 90, 200]), target] = 1  # 5 patients: round(0.1 x 5) = 0.
  part = nih.stratified_parts(m, shares=(0.7, 0.1, 0.2), target="Hernia", seed=0)
  carries = m.labels[:, target] > 0
  assert [len(np.unique(m.patients[carries & (part == j)])) for j in range(3)] == [3, 1, 1]
  none = nih.stratified_parts(m, shares=(0.5, 0.0, 0.5), target="Hernia", seed=0)
  assert not (none == 1).any()


def test_describe_split():
  m = nih.Metadata(np.asarray(["a", "b", "c", "d"]), np.asarray([1, 1, 2, 3]), np.zeros((4, 14), np.uint8))
  m.labels[[0, 1, 3], nih.CLASSES.index("Hernia")] = 1
  d = nih.describe_split({"x": m, "empty": m.subset(np.asarray([], np.int64))}, target="Hernia")
  assert d["x"] == {"images": 4, "patients": 3, "target_images": 3, "target_patients": 2, "target_prevalence": 0.75}
  assert d["empty"]["images"] == 0 and d["empty"]["target_prevalence"] is None
  json.dumps(d)


@pytest.mark.parametrize("fractions", [(0.7, 0.2), (0.7, 0.2, 0.2), (1.1, -0.1, 0.0)])
def test_random_split_rejects_bad_fractions(fractions):
  with pytest.raises(nih.DataError, match="fractions"):
    nih.random_split(_synthetic(50), seed=0, fractions=fractions)


def test_split_dispatcher(tmp_path):
  m = _synthetic()
  r = nih.split(m, str(tmp_path), name="random", val_fraction=0.1, seed=0, target="Hernia")
  assert np.allclose([len(r[k]) / len(m) for k in ("train", "val", "test")], (0.7, 0.1, 0.2), atol=0.01)
  with pytest.raises(nih.DataError, match="Unknown data.split 'kfold'.*'official', 'random'"):
    nih.split(m, str(tmp_path), name="kfold", val_fraction=0.1, seed=0, target="Hernia")
  with pytest.raises(nih.DataError, match="train_val_list.txt not found"):
    nih.split(m, str(tmp_path), name="official", val_fraction=0.1, seed=0, target="Hernia")


@real
def test_split_dispatcher_official_is_official_split(meta, official):
  s = nih.split(meta, NIH_DIR, name="official", val_fraction=0.1, seed=0, target="Hernia")
  assert all(s[k].names.tolist() == official[k].names.tolist() for k in official)


def test_tiny_fixture_has_target_patients_in_every_split(tiny_data_dir):
  from jaxcxr.data import datasets  # pylint: disable=g-import-not-at-top  (images: only for this test)
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(tiny_data_dir)
  splits = datasets.load_splits(config)
  d = nih.describe_split({k: s.meta for k, s in splits.items()}, target=config.data.target)
  assert all(d[k]["target_patients"] >= 2 for k in ("train", "val", "test")), d
  assert d["train"]["target_patients"] > d["val"]["target_patients"]


# -------------------------------------------------------------------------------------------- Table 1


def test_table1(tmp_path):
  m = nih.read_labels(_write(tmp_path / "t.csv", [HEADER_2020] + ROWS_2020))
  t = nih.table1({"all": m, "first": m.subset(np.asarray([0, 1])), "none": m.subset(np.asarray([], np.int64))})
  assert t["all"]["images"] == 3 and t["all"]["patients"] == 2 and t["all"]["no_finding"] == 1
  assert t["all"]["positives"]["Effusion"] == 1 and t["all"]["prevalence"]["Effusion"] == pytest.approx(1 / 3)
  assert t["first"]["no_finding"] == 0 and t["first"]["patients"] == 1
  assert t["all"]["sexes"] == {"F": 1, "M": 2} and t["all"]["views"] == {"AP": 1, "PA": 2}
  assert t["none"]["images"] == 0 and t["none"]["prevalence"]["Hernia"] is None
  json.dumps(t)  # Plain Python numbers only.


# ------------------------------------------------------------------------------------------- stats CLI


def _stats(*args):
  return subprocess.run([sys.executable, "-m", "jaxcxr.stats", "--config=configs/hernia.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)


@real
def test_stats_cli_json_on_real_data():
  r = _stats(f"--data_dir={NIH_DIR}", "--json")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  t = out["table"]
  assert out["split"] == "official" and out["classes"] == list(nih.CLASSES)
  assert (t["all"]["images"], t["all"]["patients"], t["all"]["no_finding"]) == (112_120, 30_805, 60_361)
  assert t["all"]["positives"] == PUBLISHED
  for part, expected in OFFICIAL.items():
    assert [t[part]["positives"][c] for c in nih.CLASSES] + [t[part]["no_finding"]] == expected
  assert (t["train_val"]["images"], t["train_val"]["patients"]) == (86_524, 28_008)
  assert (t["test"]["images"], t["test"]["patients"]) == (25_596, 2_797)
  assert t["train"]["images"] + t["val"]["images"] == 86_524
  assert t["train"]["patients"] + t["val"]["patients"] == 28_008
  assert t["all"]["prevalence"]["Hernia"] == pytest.approx(227 / 112_120)
  assert out["split_seed"] == 0 and out["target"] == "Hernia"
  v = out["target_by_split"]["val"]
  assert (v["images"], v["patients"]) == (t["val"]["images"], t["val"]["patients"])
  assert v["target_patients"] == 10 and v["target_images"] == t["val"]["positives"]["Hernia"] >= 10


@real
def test_stats_cli_random_split_test_set_does_not_follow_the_seed():
  tables = []
  for args in (["--config.seed=0"], ["--config.seed=1"], ["--config.data.split_seed=1"]):
    r = _stats(f"--data_dir={NIH_DIR}", "--config.data.split=random", "--json", *args)
    assert r.returncode == 0, r.stderr
    tables.append(json.loads(r.stdout)["table"])
  assert tables[0]["test"] == tables[1]["test"] and tables[0]["val"] == tables[1]["val"]
  assert tables[0]["test"] != tables[2]["test"]  # Only data.split_seed moves it.


@real
def test_stats_cli_table_on_real_data():
  r = _stats(f"--data_dir={NIH_DIR}", "--config.data.split=random")
  assert r.returncode == 0, r.stderr
  assert "Split: random" in r.stdout and "Hernia" in r.stdout and "112,120" in r.stdout


def test_stats_cli_missing_folder_is_a_clean_error(tmp_path):
  missing = tmp_path / "no_such_folder"
  r = _stats(f"--data_dir={missing}", "--json")
  assert r.returncode != 0
  assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
  assert str(missing) in r.stderr and "not found" in r.stderr

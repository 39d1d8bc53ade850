"""Expert bounding boxes in NIH's `BBox_List_2017.csv` format, for scoring heatmaps (jaxcxr.localize).

NIH's file: 984 boxes on 880 test images, 8 findings, one box per (image, finding). Its header is
`Image Index,Finding Label,Bbox [x,y,w,h],,,` (unquoted, so a CSV parse splits the bracket), it spells
Infiltration 'Infiltrate', and (x, y, w, h) are in pixels of the 1024x1024 PNGs: x, y the top-left corner,
x to the right and y down. The phantom writes the same format in its own images' pixels. `read_boxes`
takes the pixel grid the coordinates refer to, and `Boxes.rescaled` maps them onto the prepared images.
"""

import csv
import dataclasses
import gzip
import io
import math
import os
import re

import numpy as np

from jaxcxr.data import nih

NIH_BOX_FILE = "BBox_List_2017.csv"
NIH_BOX_IMAGE_SIZE = 1024  # NIH's boxes are in pixels of its 1024x1024 PNGs.


@dataclasses.dataclass(frozen=True)
class Boxes:
  """One row per box: image name, finding (a name in nih.CLASSES), (x, y, w, h) in an image_size grid."""
  names: np.ndarray  # (M,) str
  findings: np.ndarray  # (M,) str
  xywh: np.ndarray  # (M, 4) float64
  image_size: float  # The square pixel grid xywh is measured in.

  def __len__(self):
    return len(self.names)

  def rescaled(self, size):
    """The same boxes in a `size` x `size` grid (e.g. 1024 px coordinates onto 224 px images)."""
    return Boxes(self.names, self.findings, self.xywh * (float(size) / self.image_size), float(size))

  def subset(self, idx):
    return Boxes(self.names[idx], self.findings[idx], self.xywh[idx], self.image_size)

  def pairs(self):
    """{(image name, finding): (k, 4) boxes}, in order of first appearance."""
    out = {}
    for i, key in enumerate(zip(self.names.tolist(), self.findings.tolist())):
      out.setdefault(key, []).append(i)
    return {k: self.xywh[v] for k, v in out.items()}


def _open_text(path):
  with open(path, "rb") as f:
    magic = f.read(2)
  raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
  return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _key(header_cell):
  return re.sub(r"[^a-z0-9]", "", header_cell.lower())


def find_box_file(directory):
  """The box file in `directory` (BBox_List_2017.csv, plain or gzipped), or None."""
  for name in (NIH_BOX_FILE, NIH_BOX_FILE + ".gz"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  return None


def read_boxes(path, *, image_size=NIH_BOX_IMAGE_SIZE):
  """Reads a box file in NIH's format; coordinates in an `image_size` grid. DataError names a bad row.

  Columns are found by name: the image ('Image Index'), the finding ('Finding Label') and four numbers
  starting at the column named 'Bbox [x' (NIH) or 'x'. Labels are mapped to nih.CLASSES ('Infiltrate' ->
  'Infiltration'); boxes must have finite coordinates and positive width and height.
  """
  if not os.path.exists(path):
    raise nih.DataError(f"Box file {path} not found. NIH's is {NIH_BOX_FILE} from "
                        "https://nihcc.app.box.com/v/ChestXray-NIHCC; the phantom writes its own.")
  with _open_text(path) as f:
    rows = list(csv.reader(f))
  if not rows:
    raise nih.DataError(f"{path} is empty; expected a header 'Image Index,Finding Label,Bbox [x,y,w,h]'.")
  keys = [_key(h) for h in rows[0]]
  where = {}
  for column, aliases in (("name", ("imageindex", "image", "imagename", "filename")),
                          ("label", ("findinglabel", "findinglabels", "finding", "label")),
                          ("x", ("bboxx", "x"))):
    found = [keys.index(a) for a in aliases if a in keys]
    if found:
      where[column] = found[0]
  if len(where) < 3:
    raise nih.DataError(f"{path}: header {rows[0]} lacks {', '.join(c for c in ('name', 'label', 'x') if c not in where)}"
                        "; expected 'Image Index,Finding Label,Bbox [x,y,w,h]' as in NIH's BBox_List_2017.csv.")
  names, findings, xywh = [], [], []
  for row_no, row in enumerate(rows[1:], start=2):
    if not any(c.strip() for c in row):
      continue
    x0 = where["x"]
    if len(row) < x0 + 4:
      raise nih.DataError(f"{path} row {row_no}: {len(row)} fields, expected an image, a finding and x, y, w, h.")
    finding = nih.class_name(row[where["label"]])
    if finding is None:
      raise nih.DataError(f"{path} row {row_no}: unknown finding {row[where['label']]!r} "
                          f"(known: {', '.join(nih.CLASSES)}, or 'Infiltrate').")
    try:
      box = [float(v) for v in row[x0:x0 + 4]]
    except ValueError:
      raise nih.DataError(f"{path} row {row_no}: unreadable box {row[x0:x0 + 4]}.") from None
    if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
      raise nih.DataError(f"{path} row {row_no}: box {box} needs finite x, y and positive w, h.")
    names.append(row[where["name"]].strip())
    findings.append(finding)
    xywh.append(box)
  return Boxes(np.asarray(names, dtype=str), np.asarray(findings, dtype=str),
               np.asarray(xywh, np.float64).reshape(-1, 4), float(image_size))

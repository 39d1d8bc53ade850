"""NIH ChestX-ray14 as a TFDS dataset in ArrayRecord files, built and read with no TensorFlow installed.

The builder takes its raw data from the manual download folder (config.data.dir: the NIH release or the
phantom data in its layout) and exports the images that `datasets.prepare` decoded (uint8 grey at the
configured resolution, bad files left out and reported there) with their metadata:

  image       (S, S, 1) uint8       the image resized as `datasets.RESIZE_METHOD` says
  labels      (14,) uint8           1 = finding present, in `nih.CLASSES` order
  image_id    str                   e.g. '00000001_000.png'
  patient_id  int64
  view        str                   'PA', 'AP' or '' where unknown
  age         float32               years; NaN where unknown
  sex         str                   'M', 'F' or '' where unknown

Splits: 'train_val' and 'test', NIH's official lists (train/val carve-outs are made by jaxcxr at load time
from the seed). Read it back anywhere, TensorFlow or not:

  import tensorflow_datasets as tfds
  source = tfds.builder_from_directory(PATH).as_data_source()['train_val']   # random access, Grain-ready
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxcxr.data import datasets
from jaxcxr.data import nih


@dataclasses.dataclass
class ChestXray14Config(tfds.core.BuilderConfig):
  image_size: int = 224


class ChestXray14(tfds.core.GeneratorBasedBuilder):
  """NIH ChestX-ray14, uint8 grey at one resolution, with labels and per-image metadata."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: ArrayRecord, uint8 Tensor images, 14 labels, patient metadata."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = datasets.NIH_DOWNLOAD

  def _info(self):
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=(f"NIH ChestX-ray14 chest radiographs as uint8 grey at {size}x{size} px, resized with "
                     f"{datasets.RESIZE_METHOD}; labels in the order {', '.join(nih.CLASSES)}. Images that "
                     f"were missing or unreadable are left out (see preparation_report.json next to the "
                     f"prepared images)."),
        features=tfds.features.FeaturesDict({
            # Raw bytes: the default encoding writes one int64 per pixel (8x larger, ~100x slower).
            "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "labels": tfds.features.Tensor(shape=(len(nih.CLASSES),), dtype=np.uint8),
            "image_id": tfds.features.Text(),
            "patient_id": tfds.features.Scalar(dtype=np.int64),
            "view": tfds.features.Text(),
            "age": tfds.features.Scalar(dtype=np.float32),
            "sex": tfds.features.Text(),
        }),
        supervised_keys=("image", "labels"),
        homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
        metadata=tfds.core.MetadataDict(image_size=size, resize_method=datasets.RESIZE_METHOD,
                                        decoder_version=datasets.DECODER_VERSION, classes=list(nih.CLASSES)),
    )

  def _split_generators(self, dl_manager):
    directory = os.fspath(dl_manager.manual_dir)
    try:
      label_file = nih.locate_label_file(directory)
    except nih.DataError as e:
      raise nih.DataError(f"{e}\n{datasets.NIH_DOWNLOAD}") from None
    meta = nih.read_labels(label_file)
    prepared = datasets.prepare(directory, meta, size=self.builder_config.image_size)  # Reuses a finished one.
    out = {}
    for split, list_name in (("train_val", nih.TRAIN_VAL_LIST), ("test", nih.TEST_LIST)):
      names = set(nih.read_list(os.path.join(directory, list_name)))
      out[split] = self._generate_examples(prepared, np.isin(prepared.meta.names, list(names)))
    return out

  def _generate_examples(self, prepared, mask):
    m = prepared.meta
    for i in np.flatnonzero(mask):
      yield str(m.names[i]), {
          "image": np.asarray(prepared.images[prepared.rows[i]])[..., None],
          "labels": m.labels[i],
          "image_id": str(m.names[i]),
          "patient_id": int(m.patients[i]),
          "view": str(m.views[i]),
          "age": np.float32(m.ages[i]),
          "sex": str(m.sexes[i]),
      }


def tfds_dir(directory):
  """Where the TFDS datasets of the data folder `directory` live."""
  return os.path.join(directory, datasets.PREPARED, "tfds")


def make_builder(directory, image_size):
  """The builder of `directory` (manual download folder) at `image_size` px, writing ArrayRecord files."""
  config = ChestXray14Config(name=f"{image_size}px", image_size=image_size,
                             description=f"{image_size}x{image_size} px, {datasets.RESIZE_METHOD}")
  return ChestXray14(config=config, data_dir=tfds_dir(directory), file_format="array_record")


def build(config, prepared=None):
  """Builds (or reuses) the TFDS dataset for `config.data`; returns the builder.

  `prepared` (from datasets.prepare_config) only saves re-reading; the builder prepares on its own if needed.
  TFDS writes into a temporary folder and renames it when complete, so a killed build is simply redone.
  """
  del prepared  # The builder reuses the finished preparation through datasets.prepare.
  directory = datasets.data_dir(config)
  builder = make_builder(directory, config.data.image_size)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=directory))
  return builder


class Images:
  """`Split.images` over TFDS data sources: images[int] -> (S, S) uint8, images[int array] -> (n, S, S).

  Rows number the examples of `sources` one split after another (in the order given).
  """

  def __init__(self, sources):
    self._sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in self._sources])
    first = self._sources[0][0]["image"]
    self.shape = (int(self._starts[-1]), *first.shape[:2])
    self.dtype = np.uint8

  def __len__(self):
    return self.shape[0]

  def _get(self, rows):
    which = np.searchsorted(self._starts, rows, side="right") - 1
    out = np.empty((len(rows), *self.shape[1:]), np.uint8)
    for k in np.unique(which):
      pick = np.flatnonzero(which == k)
      records = self._sources[k].__getitems__((rows[pick] - self._starts[k]).tolist())
      for p, r in zip(pick, records):
        out[p] = r["image"][..., 0]
    return out

  def __getitem__(self, rows):
    if np.ndim(rows) == 0:
      return self._get(np.asarray([int(rows)]))[0]
    return self._get(np.asarray(rows, np.int64).reshape(-1))

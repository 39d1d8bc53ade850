"""What every data source produces: a `Split` of labelled uint8 images, and the one resize they share.

Sources (data/datasets.py for the phantom and NIH, data/chestmnist.py for MedMNIST's npz) import this
module, never each other.
"""

import dataclasses

import numpy as np
from PIL import Image

from jaxcxr.data import nih

# How `resize` works (recorded in prepared folders, so a change of method re-prepares them).
RESIZE_METHOD = ("area averaging by the largest whole factor (PIL Image.reduce), then PIL bilinear with "
                 "antialiasing for the remaining factor below 2 (Image.resize, BILINEAR, reducing_gap=1.0), "
                 "square")


@dataclasses.dataclass
class Split:
  """One split: metadata rows and, for row i, the image `images[rows[i]]` ((S, S) uint8)."""
  name: str
  meta: nih.Metadata
  images: np.ndarray  # (M, S, S) uint8, memory-mapped, shared by all splits.
  rows: np.ndarray  # (N,) int64 into `images`.

  def __len__(self):
    return len(self.meta)


def resize(im, size):
  """A PIL image resized to (size, size) as RESIZE_METHOD says, as a numpy array.

  1024 -> 256 px is a plain 4x4 box average (0.5 ms; a full bilinear filter over the 1024 px image costs
  3 ms, a third of the PNG decode); 1024 -> 224 averages 4x4 boxes, then filters 256 -> 224 bilinearly.
  """
  if im.size == (size, size):
    return np.asarray(im)
  return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=1.0))


def resize_array(image, size):
  """`resize` of an (H, W) uint8 array."""
  image = np.asarray(image)
  if image.shape == (size, size):
    return image
  return resize(Image.fromarray(image), size)

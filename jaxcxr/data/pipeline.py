"""Grain input pipelines: an endless, per-epoch reshuffled training stream and ordered eval batches.

Elements are dicts of numpy arrays: `image` (S, S, 1) uint8 and `labels` (14,) float32. uint8 travels to
the device; normalisation happens inside the jitted step.
"""

import grain
import numpy as np

from jaxcxr.data import datasets


class SplitSource(grain.sources.RandomAccessDataSource):
  """Random access to one split's prepared images and labels."""

  def __init__(self, split: datasets.Split):
    self._images, self._rows = split.images, split.rows
    self._labels = split.meta.labels.astype(np.float32)

  def __len__(self):
    return len(self._rows)

  def __getitem__(self, i):
    return {"image": np.asarray(self._images[self._rows[i]])[..., None], "labels": self._labels[i]}


def train_iterator(split, *, global_batch, seed, process_index=0, process_count=1, num_workers=0):
  """An endless iterator of this process's share of each global training batch.

  Each epoch is a fresh seeded shuffle of the split; process p reads positions p, p + P, ... of it, so
  processes see disjoint images. The iterator's state (`get_state()`) is checkpointed with the model.
  """
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} does not divide by the {process_count} processes.")
  ds = grain.MapDataset.source(SplitSource(split)).seed(seed).shuffle()
  # Equal shares per process: drop the (at most P - 1, different each epoch) images that don't divide.
  ds = ds[:len(ds) - len(ds) % process_count][process_index::process_count].repeat()
  ds = ds.batch(global_batch // process_count, drop_remainder=True).to_iter_dataset()
  if num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(ds)


def eval_batches(split, *, global_batch, process_index=0, process_count=1):
  """Yields (this process's part of a global batch, number of real rows in the global batch), in order.

  The last batch is padded with zeros up to `global_batch`; callers drop the padded rows. Process p's
  part is rows [p * b, (p + 1) * b) of each global batch, b = global_batch / process_count.
  """
  local = global_batch // process_count
  size = split.images.shape[1:]
  for start in range(0, len(split), global_batch):
    idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
    idx = idx[idx < len(split)]
    images = np.zeros((local, *size, 1), np.uint8)
    images[:len(idx), ..., 0] = split.images[split.rows[idx]]
    yield {"image": images}, min(global_batch, len(split) - start)

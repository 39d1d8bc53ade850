"""Grain input pipelines: an endless, per-epoch reshuffled (or oversampled) training stream and ordered
eval batches. Oversampling plans come from data/sampling.py; augmentation runs in the jitted train step.

Training elements are whole batches, dicts of numpy arrays: `image` (B, S, S, 1) uint8, `labels` (B, 14)
float32 and `position` (B,) int32. uint8 travels to the device; normalisation happens inside the jitted step.
"""

import collections
import sys

import grain
import numpy as np

from jaxcxr.data import sampling as sampling_lib
from jaxcxr.data import split as split_lib


# Batches are read ahead by background threads while the device trains. Grain's default (16 threads, 500
# elements ahead) suits single images; 500 whole batches would hold gigabytes.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


_MemmapFile = collections.namedtuple("_MemmapFile", "filename offset shape dtype")


class _Epochs:
  """Source indices of every epoch of a stream: `plan.epoch(e)`, or a seeded shuffle of the split."""

  def __init__(self, n, seed, plan=None):
    self._n, self._seed, self._plan = n, seed, plan
    self.length = plan.epoch_length if plan is not None else n
    self._cache = {}  # A batch spans at most two epochs; keep the last few.

  def __call__(self, e):
    if e not in self._cache:
      if len(self._cache) > 2:
        self._cache.pop(next(iter(self._cache)))
      if self._plan is not None:
        self._cache[e] = self._plan.epoch(e)
      else:
        self._cache[e] = np.random.default_rng([self._seed, e, 0x5348]).permutation(self._n)
    return self._cache[e]


class BatchSource(grain.sources.RandomAccessDataSource):
  """This process's endless stream of training batches: batch b holds its elements j = b * B .. b * B + B - 1.

  Epoch e is a list of L source indices (`_Epochs`); process p reads offsets p, p + P, ... of it (the last
  L mod P are dropped), so element j is epoch(j // (L // P))[(j % (L // P)) * P + p] and its offset in the
  global stream is j * P + p. The batch index alone fixes the batch: a restored iterator resumes exactly.
  A whole batch is read with one sorted fancy index into the image array (per-image reads through Grain
  cost ~0.25 ms each, more than the copy itself).
  """

  def __init__(self, split: split_lib.Split, epochs: _Epochs, *, batch_size, process_index=0, process_count=1,
               with_index=False):
    self._images, self._rows = split.images, split.rows
    self._labels = split.meta.labels.astype(np.float32)
    self._epochs, self._b, self._p, self._count = epochs, batch_size, process_index, process_count
    self._with_index = with_index
    self._per_epoch = epochs.length // process_count
    if not self._per_epoch:
      raise ValueError(f"The training epoch ({epochs.length} images) is smaller than the {process_count} "
                       f"processes.")

  def __getstate__(self):
    # Grain's worker processes get the source pickled; a memmap would travel as a copy of all its pixels
    # (7 GB for NIH at 256 px). It travels as its file instead, reopened read-only on arrival.
    state = dict(self.__dict__)
    im = self._images
    if isinstance(im, np.memmap) and im.filename and im.flags.c_contiguous:
      state["_images"] = _MemmapFile(im.filename, im.offset, im.shape, im.dtype.str)
    return state

  def __setstate__(self, state):
    if isinstance(state["_images"], _MemmapFile):
      f = state["_images"]
      state["_images"] = np.memmap(f.filename, dtype=f.dtype, mode="r", offset=f.offset, shape=f.shape)
    self.__dict__.update(state)

  def __len__(self):
    return sys.maxsize // (2 * self._b)  # Endless in practice; Grain needs a length.

  def __getitem__(self, b):
    j = int(b) * self._b + np.arange(self._b, dtype=np.int64)
    e, offset = np.divmod(j, self._per_epoch)
    idx = np.empty(self._b, np.int64)
    for epoch in np.unique(e):
      at = e == epoch
      idx[at] = self._epochs(int(epoch))[offset[at] * self._count + self._p]
    rows = self._rows[idx]
    order = np.argsort(rows, kind="stable")  # Sorted reads: one pass over the memory-mapped file.
    images = np.empty((self._b, *self._images.shape[1:], 1), np.uint8)
    images[order, ..., 0] = self._images[rows[order]]
    out = {"image": images, "labels": self._labels[idx],
           # Per-example augmentation keys derive from this offset, so augmentation does not depend on the
           # number of processes (the same image gets the same offset whatever the layout).
           "position": (j * self._count + self._p).astype(np.int32)}
    if self._with_index:  # Each image's row in the split, for inspection.
      out["index"] = idx
    return out


def train_iterator(split, *, global_batch, seed, process_index=0, process_count=1, num_workers=0,
                   sampling=None, target="Hernia", with_index=False):
  """An endless iterator of this process's share of each global training batch.

  With `sampling` (config.data.sampling) None or 'none' without undersampling, each epoch is a fresh
  seeded shuffle of the split; otherwise the epoch is the plan's (see data/sampling.py). Process p reads
  positions p, p + P, ... of each epoch, so processes see disjoint draws. The iterator's state
  (`get_state()`, the index of the next batch) is checkpointed with the model. Each batch carries
  `position`, every image's int32 offset in the global stream (process p's j-th image is at j * P + p);
  `with_index` adds each image's row in the split ('index'), for inspection.
  """
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} does not divide by the {process_count} processes.")
  plan = None
  if sampling is not None and not sampling_lib.is_identity(sampling):
    plan = sampling_lib.make_plan(split.meta.labels, sampling, target=target, seed=seed)
  source = BatchSource(split, _Epochs(len(split), seed, plan), batch_size=global_batch // process_count,
                       process_index=process_index, process_count=process_count, with_index=with_index)
  ds = grain.MapDataset.source(source).to_iter_dataset(READ_OPTIONS)
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

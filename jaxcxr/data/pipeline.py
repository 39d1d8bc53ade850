"""Grain input pipelines: an endless, per-epoch reshuffled (or oversampled) training stream and ordered
eval batches. Oversampling plans come from data/sampling.py; augmentation runs in the jitted train step.

Elements are dicts of numpy arrays: `image` (S, S, 1) uint8 and `labels` (14,) float32. uint8 travels to
the device; normalisation happens inside the jitted step.
"""

import sys

import grain
import numpy as np

from jaxcxr.data import datasets
from jaxcxr.data import sampling as sampling_lib


class SplitSource(grain.sources.RandomAccessDataSource):
  """Random access to one split's prepared images and labels."""

  def __init__(self, split: datasets.Split, *, with_index=False):
    self._images, self._rows = split.images, split.rows
    self._labels = split.meta.labels.astype(np.float32)
    self._with_index = with_index

  def __len__(self):
    return len(self._rows)

  def __getitem__(self, i):
    out = {"image": np.asarray(self._images[self._rows[i]])[..., None], "labels": self._labels[i]}
    if self._with_index:  # The image's row in the split, for inspection.
      out["index"] = np.int64(i)
    return out


class PlanSource(grain.sources.RandomAccessDataSource):
  """This process's endless share of a sampling plan's stream: position j -> (epoch, offset) -> image.

  Epoch e is `plan.epoch(e)` (a fixed length L); process p reads its offsets p, p + P, ... (the last
  L mod P are dropped), so the position alone fixes the element and a restored iterator resumes exactly.
  """

  def __init__(self, split: datasets.Split, plan: sampling_lib.Plan, *, process_index=0, process_count=1,
               with_index=False):
    self._split = SplitSource(split, with_index=with_index)
    self._plan, self._p, self._count = plan, process_index, process_count
    self._cached = (None, None)  # (epoch, its source indices): reads go through one epoch at a time.
    self._per_epoch = plan.epoch_length // process_count
    if not self._per_epoch:
      raise ValueError(f"The sampling plan's epoch ({plan.epoch_length} images) is smaller than the "
                       f"{process_count} processes.")

  def __len__(self):
    return sys.maxsize // 2  # Endless in practice; Grain needs a length.

  def __getitem__(self, j):
    e, offset = divmod(int(j), self._per_epoch)
    if self._cached[0] != e:
      self._cached = (e, self._plan.epoch(e))
    return self._split[int(self._cached[1][offset * self._count + self._p])]


def train_iterator(split, *, global_batch, seed, process_index=0, process_count=1, num_workers=0,
                   sampling=None, target="Hernia", with_index=False):
  """An endless iterator of this process's share of each global training batch.

  With `sampling` (config.data.sampling) None or 'none' without undersampling, each epoch is a fresh
  seeded shuffle of the split; otherwise the epoch is the plan's (see data/sampling.py). Process p reads
  positions p, p + P, ... of each epoch, so processes see disjoint draws. The iterator's state
  (`get_state()`) is checkpointed with the model. Every element carries `position`, its int32 offset in
  the global stream (process p's j-th element is at j * P + p); `with_index` adds each image's row in the
  split ('index'), for inspection.
  """
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} does not divide by the {process_count} processes.")
  if sampling is None or sampling_lib.is_identity(sampling):
    ds = grain.MapDataset.source(SplitSource(split, with_index=with_index)).seed(seed).shuffle()
    # Equal shares per process: drop the (at most P - 1, different each epoch) images that don't divide.
    ds = ds[:len(ds) - len(ds) % process_count][process_index::process_count].repeat()
  else:
    plan = sampling_lib.make_plan(split.meta.labels, sampling, target=target, seed=seed)
    ds = grain.MapDataset.source(PlanSource(split, plan, process_index=process_index,
                                            process_count=process_count, with_index=with_index))
  # Each element's offset in the global stream (the same image gets the same offset whatever the number of
  # processes): per-example augmentation keys derive from it, so augmentation does not depend on layout.
  ds = ds.map_with_index(lambda j, x: {**x, "position": np.int32(j * process_count + process_index)})
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

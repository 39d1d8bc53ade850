"""Import ImageNet weights saved by PyTorch (torchvision or timm naming) into the Flax models.

The weights come from a local `.safetensors` file; nothing here needs PyTorch or the network. A torchvision
`.pth` file is turned into one by `python -m jaxcxr.convert_weights` (the only place that needs torch).
Pretrained timm checkpoints are published as `.safetensors` already and can be used as they are.

What the import does:
  * maps torchvision/timm names onto the Flax tree (`layer2.0.downsample.0.weight` ->
    `BasicBlock_2/conv_proj/kernel`, `features.denseblock1.denselayer1.norm1.running_mean` ->
    `denseblock1/denselayer1/norm1/mean` in batch_stats, ...);
  * transposes convolution kernels OIHW -> HWIO (and Dense kernels (out, in) -> (in, out));
  * folds the RGB stem into the one-channel stem by summing the kernel over the colour channels, so a grey
    image x gives what the RGB network gives for (x, x, x);
  * puts BatchNorm running mean/var into batch_stats and weight/bias into params (scale/bias);
  * leaves the classifier head as initialised: the file's `fc.*` / `classifier.*` (ImageNet's 1000 classes)
    are ignored, as are `num_batches_tracked` counters.

ImageNet networks expect inputs normalised with ImageNet's statistics; for a grey image the channel average
(mean 0.449, std 0.226 on a [0, 1] scale) is the natural choice.

timm names its ResNets and DenseNets like torchvision (timm's DenseNet fuses BN and ReLU in one module that
keeps the `normN` names and BatchNorm's parameter names). Old torchvision DenseNet checkpoints that spell
`norm.1` for `norm1` and a `module.` prefix left by DataParallel are both accepted.
"""

import functools
import re
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np
from flax import traverse_util
from flax.core import frozen_dict

from jaxcxr import errors

# Keys in the file that belong to ImageNet's classifier; the model's own head stays as initialised.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.")
_IGNORED_SUFFIXES = ("num_batches_tracked",)

# Flax leaf name -> PyTorch parameter name, per collection.
_PARAM_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STATS_LEAF = {"mean": "running_mean", "var": "running_var"}

# The stem convolution: the only one whose input channels may be folded (RGB -> grey).
_STEM = ("conv_init",)

_RESNET_STAGES = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}


class WeightImportError(errors.UserError, ValueError):
  """The file does not fit the model. `missing`, `unexpected` and `mismatched` list every problem."""

  def __init__(self, path, model_name, missing, unexpected, mismatched):
    self.path = str(path)
    self.model_name = model_name
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = sorted(mismatched)  # (key, shape in the file, shape the model needs)
    lines = [f"Cannot import {self.path} into {model_name}: {len(self.missing)} missing, "
             f"{len(self.unexpected)} unexpected and {len(self.mismatched)} mismatched keys."]
    if self.missing:
      lines.append("Missing from the file (the model needs them):")
      lines.extend(f"  {k}" for k in self.missing)
    if self.unexpected:
      lines.append("Unexpected in the file (the model has no place for them):")
      lines.extend(f"  {k}" for k in self.unexpected)
    if self.mismatched:
      lines.append("Shape mismatches (file vs what the model needs, PyTorch layout):")
      lines.extend(f"  {k}: file {f} vs model {m}" for k, f, m in self.mismatched)
    super().__init__("\n".join(lines))


def _resnet_stage_sizes(model_name: str):
  """Blocks per stage, from the registered constructor where it says, else the canonical table."""
  from jaxcxr import models  # pylint: disable=g-import-not-at-top  (models imports this package's siblings)
  ctor = models.MODELS.get(model_name)
  stages = getattr(ctor, "keywords", {}).get("stage_sizes") if ctor is not None else None
  if stages is None:
    stages = _RESNET_STAGES.get(model_name)
  if stages is None:
    raise ValueError(f"Don't know the stage sizes of {model_name!r}.")
  return tuple(stages)


def _resnet_module(path: Tuple[str, ...], stages) -> str:
  """Flax module path of the ResNet -> torchvision module name."""
  if path == ("conv_init",):
    return "conv1"
  if path == ("bn_init",):
    return "bn1"
  if len(path) == 2:
    block, layer = path
    m = re.fullmatch(r"(?:BasicBlock|BottleneckBlock)_(\d+)", block)
    if m:
      index = int(m.group(1))
      for stage, size in enumerate(stages):
        if index < size:
          prefix = f"layer{stage + 1}.{index}"
          break
        index -= size
      else:
        raise KeyError(path)
      if layer == "conv_proj":
        return f"{prefix}.downsample.0"
      if layer == "norm_proj":
        return f"{prefix}.downsample.1"
      m = re.fullmatch(r"(Conv|BatchNorm)_(\d+)", layer)
      if m:
        return f"{prefix}.{'conv' if m.group(1) == 'Conv' else 'bn'}{int(m.group(2)) + 1}"
  raise KeyError(path)


def _densenet_module(path: Tuple[str, ...]) -> str:
  """Flax module path of the DenseNet -> torchvision module name (the Flax names mirror torchvision's)."""
  special = {("conv_init",): "conv0", ("bn_init",): "norm0", ("norm_final",): "norm5"}
  if path in special:
    return "features." + special[path]
  if path and re.fullmatch(r"denseblock\d+|transition\d+", path[0]):
    return "features." + ".".join(path)
  raise KeyError(path)


def _module_mapper(model_name: str) -> Callable[[Tuple[str, ...]], str]:
  if model_name.startswith("resnet"):
    return functools.partial(_resnet_module, stages=_resnet_stage_sizes(model_name))
  if model_name.startswith("densenet"):
    return _densenet_module
  raise ValueError(f"No weight mapping for model {model_name!r}; supported: resnet18/34/50/101/152, "
                   "densenet121/169 (and other registered resnet*/densenet* variants).")


def _torch_shape(flax_shape):
  """PyTorch layout of a Flax leaf: HWIO -> OIHW, (in, out) -> (out, in), vectors unchanged."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:
    return tuple(flax_shape[::-1])
  return tuple(flax_shape)


def _to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:
    return array.T
  return array


def _is_head(path: Tuple[str, ...]) -> bool:
  return bool(path) and path[0] == "head"


def expected_keys(model_name: str, params, batch_stats) -> Dict[str, Tuple[Tuple[str, ...], str, tuple]]:
  """The file keys the model needs: {torch key: (flax path, collection, torch shape)}, head excluded.

  Shapes are PyTorch's layout for this one-channel model (the stem as (O, 1, 7, 7); a file may hold (O, 3, 7, 7)
  instead, which is folded). Works on arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).
  """
  module_name = _module_mapper(model_name)
  out = {}
  for collection, tree, leaf_names in (("params", params, _PARAM_LEAF), ("batch_stats", batch_stats, _STATS_LEAF)):
    for path, leaf in traverse_util.flatten_dict(frozen_dict.unfreeze(tree)).items():
      if _is_head(path):
        continue
      if path[-1] not in leaf_names:
        raise ValueError(f"Unexpected leaf {'/'.join(path)} in {collection} of {model_name}.")
      try:
        module = module_name(path[:-1])
      except KeyError:
        raise ValueError(f"No PyTorch name for {collection} {'/'.join(path)} of {model_name}.") from None
      out[f"{module}.{leaf_names[path[-1]]}"] = (path, collection, _torch_shape(leaf.shape))
  return out


def _normalise_keys(tensors: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Drops a DataParallel `module.` prefix and renames old torchvision DenseNet `norm.1` to `norm1`."""
  keys = list(tensors)
  strip = bool(keys) and all(k.startswith("module.") for k in keys)
  out = {}
  for k, v in tensors.items():
    k = k[len("module."):] if strip else k
    k = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", k)
    out[k] = v
  return out


def _ignored(key: str) -> bool:
  return key.startswith(_CLASSIFIER_PREFIXES) or key.endswith(_IGNORED_SUFFIXES)


def import_tensors(tensors: Mapping[str, np.ndarray], *, model_name: str, params, batch_stats,
                   source: str = "<tensors>") -> Tuple[Any, Any]:
  """`import_pretrained` on tensors already in memory ({torch name: numpy array}); `source` names them in errors."""
  tensors = _normalise_keys(tensors)
  expected = expected_keys(model_name, params, batch_stats)
  missing = [k for k in expected if k not in tensors]
  unexpected = sorted(k for k in tensors if k not in expected and not _ignored(k))
  mismatched = []
  for key, (path, _, shape) in expected.items():
    if key not in tensors:
      continue
    got = tuple(tensors[key].shape)
    foldable = path[:-1] == _STEM and len(got) == 4 and got[1] == 3 and shape[1] == 1 and (
        got[:1] + got[2:] == shape[:1] + shape[2:])
    if got != shape and not foldable:
      mismatched.append((key, got, shape))
  if missing or unexpected or mismatched:
    raise WeightImportError(source, model_name, missing, unexpected, mismatched)

  flat = {"params": traverse_util.flatten_dict(frozen_dict.unfreeze(params)),
          "batch_stats": traverse_util.flatten_dict(frozen_dict.unfreeze(batch_stats))}
  for key, (path, collection, shape) in expected.items():
    value = np.asarray(tensors[key], dtype=np.float32)
    if value.shape != shape:  # the RGB stem: x -> (x, x, x) makes the grey kernel the sum over colours
      value = value.sum(axis=1, keepdims=True)
    old = flat[collection][path]
    flat[collection][path] = _as_like(_to_flax(value), old)

  new_params = traverse_util.unflatten_dict(flat["params"])
  new_stats = traverse_util.unflatten_dict(flat["batch_stats"])
  if isinstance(params, frozen_dict.FrozenDict):
    new_params = frozen_dict.freeze(new_params)
  if isinstance(batch_stats, frozen_dict.FrozenDict):
    new_stats = frozen_dict.freeze(new_stats)
  return new_params, new_stats


def _as_like(value: np.ndarray, like):
  """`value` as an array of `like`'s dtype (a jax array unless `like` is numpy)."""
  value = np.ascontiguousarray(value)
  if isinstance(like, np.ndarray):
    return value.astype(like.dtype)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.asarray(value, dtype=like.dtype)


def load_safetensors(path) -> Dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file as numpy arrays (bfloat16 ones too: see ml_dtypes)."""
  import ml_dtypes  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (JAX needs it; numpy bfloat16)
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  return safetensors_numpy.load_file(str(path))


def import_pretrained(path, *, model_name: str, params, batch_stats) -> Tuple[Any, Any]:
  """Returns (params, batch_stats) with the trunk taken from the PyTorch weights in the safetensors file `path`.

  Args:
    path: a `.safetensors` file with torchvision- or timm-named tensors (e.g. from `jaxcxr.convert_weights`).
    model_name: the `jaxcxr.models.MODELS` name the trees belong to (resnet18/34/50/101/152, densenet121/169).
    params: the model's initialised params; the head (`head`) is returned as it is.
    batch_stats: the model's initialised batch_stats.

  Returns:
    New (params, batch_stats) trees with the structure, shapes and dtypes of the ones given.

  Raises:
    WeightImportError (a ValueError): listing every missing key, unexpected key (other than the classifier and
      `num_batches_tracked`) and shape mismatch, with the file's name.
  """
  return import_tensors(load_safetensors(path), model_name=model_name, params=params, batch_stats=batch_stats,
                        source=str(path))

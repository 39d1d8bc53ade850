r"""Converts PyTorch weights (.pth / .pt) to a .safetensors file that `jaxcxr.models.weights` reads.

  python -m jaxcxr.convert_weights --input resnet50-11ad3fa6.pth --output resnet50.safetensors
  python -m jaxcxr.convert_weights --input densenet121.pth --output densenet121.safetensors \
      --check_model densenet121

The input may be a state_dict (what torchvision publishes), a checkpoint dict holding one under 'state_dict',
'model_state_dict', 'model' or 'state_dict_ema', or, with --trust_pickle, a whole pickled nn.Module. Only
tensors are written; their names are kept as they are (the importer understands torchvision's and timm's).

This is the one place in jaxcxr that needs PyTorch (`pip install torch`); training and the import itself
do not. timm publishes its weights as .safetensors already: those need no conversion.
"""

import os
import sys

from absl import app
from absl import flags

from jaxcxr import cli
from jaxcxr import errors

_INPUT = flags.DEFINE_string("input", None, "PyTorch weights: a .pth/.pt state_dict or checkpoint.")
_OUTPUT = flags.DEFINE_string("output", None, "The .safetensors file to write.")
_TRUST_PICKLE = flags.DEFINE_bool(
    "trust_pickle", False,
    "Allow full unpickling (torch.load weights_only=False), needed for a whole pickled model or a checkpoint "
    "holding non-tensor objects. Unpickling runs code from the file: use only on files you trust.")
_CHECK_MODEL = flags.DEFINE_string(
    "check_model", None,
    "Optionally a jaxcxr model name (e.g. resnet50, densenet121): after writing, check that the file imports "
    "into it, listing any missing, unexpected or mismatched keys.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")


class ConversionError(errors.UserError, RuntimeError):
  pass


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(
        "jaxcxr.convert_weights needs PyTorch to read .pth files, and it is not installed. Install it with "
        "`pip install torch` (the CPU build is enough), or convert on another machine and copy the "
        ".safetensors file over. Training and `jaxcxr.models.weights.import_pretrained` need no torch.") from None
  return torch


def _state_dict(obj, torch):
  """Finds the {name: tensor} mapping in what torch.load returned."""
  if isinstance(obj, torch.nn.Module):
    return obj.state_dict()
  if isinstance(obj, dict):
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
      return obj
    for key in _NESTED_KEYS:
      if key in obj:
        return _state_dict(obj[key], torch)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
      return tensors
  raise ConversionError(f"Found no tensors in the file (a {type(obj).__name__}); expected a state_dict, a "
                        f"checkpoint dict with one of {list(_NESTED_KEYS)}, or a pickled nn.Module.")


def load_state_dict(path, trust_pickle=False):
  """{name: torch.Tensor} from a PyTorch file."""
  torch = _import_torch()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # pylint: disable=broad-except
    if trust_pickle:
      raise
    raise ConversionError(
        f"torch.load could not read {path} in its safe weights-only mode ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). If it is a whole pickled model or a checkpoint with other "
        "objects and you trust the file, rerun with --trust_pickle.") from e
  return _state_dict(obj, torch)


def convert(input_path, output_path, trust_pickle=False):
  """Writes the tensors of `input_path` to `output_path` (safetensors); returns how many were written."""
  torch = _import_torch()
  from safetensors import torch as safetensors_torch  # pylint: disable=g-import-not-at-top
  state = load_state_dict(input_path, trust_pickle=trust_pickle)
  # Own, contiguous copies: safetensors refuses tensors that share storage or are views.
  tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  safetensors_torch.save_file(tensors, output_path, metadata={"source": os.path.basename(input_path)})
  return len(tensors)


def check(path, model_name):
  """Imports `path` into `model_name` on abstract shapes; raises WeightImportError listing any problem."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxcxr import models  # pylint: disable=g-import-not-at-top
  from jaxcxr.models import weights  # pylint: disable=g-import-not-at-top
  model = models.get_model(model_name, num_classes=1)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)), train=False))
  weights.import_pretrained(path, model_name=model_name, params=shapes["params"],
                            batch_stats=shapes["batch_stats"])


def main(argv):
  cli.start(argv, logs=False)
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError("Both --input and --output are required.")
  if not os.path.isfile(_INPUT.value):
    raise app.UsageError(f"--input {_INPUT.value} is not a file.")
  if os.path.exists(_OUTPUT.value) and not _OVERWRITE.value:
    raise app.UsageError(f"{_OUTPUT.value} exists; pass --overwrite to replace it.")
  try:
    n = convert(_INPUT.value, _OUTPUT.value, trust_pickle=_TRUST_PICKLE.value)
  except ConversionError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  print(f"Wrote {n} tensors to {_OUTPUT.value}.")
  if _CHECK_MODEL.value:
    try:
      check(_OUTPUT.value, _CHECK_MODEL.value)
    except ValueError as e:
      print(f"Error: {e}", file=sys.stderr)
      return 1
    print(f"{_OUTPUT.value} imports into {_CHECK_MODEL.value}.")
  return 0


if __name__ == "__main__":
  cli.run(main, "jaxcxr.convert_weights")

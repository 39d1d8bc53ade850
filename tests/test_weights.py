"""ImageNet weight import: name mapping, layouts, stem folding, errors; and, where PyTorch is installed, exact
agreement with torchvision's networks and the .pth converter.

The tests without torch run everywhere, on safetensors files written from numpy with torchvision's names. The
names and shapes they expect are generated here from the torchvision architectures, independently of the
mapping in `jaxcxr.models.weights`.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from jaxcxr import models
from jaxcxr.models import weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------------------------
# torchvision's names and shapes (PyTorch layout), written out from the architectures.


def _bn(prefix, c):
  return {f"{prefix}.{leaf}": (c,) for leaf in ("weight", "bias", "running_mean", "running_var")}


def torchvision_resnet_keys(stages, bottleneck, num_classes=1000):
  keys = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
  expansion = 4 if bottleneck else 1
  inplanes = 64
  for s, blocks in enumerate(stages):
    planes = 64 * 2**s
    for b in range(blocks):
      p = f"layer{s + 1}.{b}"
      if bottleneck:
        convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
      else:
        convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
      for n, shape in enumerate(convs, 1):
        keys[f"{p}.conv{n}.weight"] = shape
        keys.update(_bn(f"{p}.bn{n}", shape[0]))
      if (s > 0 and b == 0) or inplanes != planes * expansion:
        keys[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
        keys.update(_bn(f"{p}.downsample.1", planes * expansion))
      inplanes = planes * expansion
  keys["fc.weight"], keys["fc.bias"] = (num_classes, inplanes), (num_classes,)
  return keys


def torchvision_densenet_keys(block_config, growth=32, bn_size=4, init=64, num_classes=1000):
  keys = {"features.conv0.weight": (init, 3, 7, 7), **_bn("features.norm0", init)}
  c = init
  for i, layers in enumerate(block_config, 1):
    for j in range(layers):
      p = f"features.denseblock{i}.denselayer{j + 1}"
      keys.update(_bn(f"{p}.norm1", c + j * growth))
      keys[f"{p}.conv1.weight"] = (bn_size * growth, c + j * growth, 1, 1)
      keys.update(_bn(f"{p}.norm2", bn_size * growth))
      keys[f"{p}.conv2.weight"] = (growth, bn_size * growth, 3, 3)
    c += layers * growth
    if i < len(block_config):
      keys.update(_bn(f"features.transition{i}.norm", c))
      keys[f"features.transition{i}.conv.weight"] = (c // 2, c, 1, 1)
      c //= 2
  keys.update(_bn("features.norm5", c))
  keys["classifier.weight"], keys["classifier.bias"] = (num_classes, c), (num_classes,)
  return keys


TORCHVISION_KEYS = {
    "resnet18": lambda: torchvision_resnet_keys((2, 2, 2, 2), bottleneck=False),
    "resnet34": lambda: torchvision_resnet_keys((3, 4, 6, 3), bottleneck=False),
    "resnet50": lambda: torchvision_resnet_keys((3, 4, 6, 3), bottleneck=True),
    "resnet101": lambda: torchvision_resnet_keys((3, 4, 23, 3), bottleneck=True),
    "resnet152": lambda: torchvision_resnet_keys((3, 8, 36, 3), bottleneck=True),
    "densenet121": lambda: torchvision_densenet_keys((6, 12, 24, 16)),
    "densenet169": lambda: torchvision_densenet_keys((6, 12, 32, 32)),
}
# torchvision's parameter counts (weights=None models, classifier included).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808, "densenet121": 7_978_856,
                      "densenet169": 14_149_480}

_SHAPES = {}


def _shapes(name):
  """The model's variables as shapes (eval_shape: no compute), cached per model."""
  if name not in _SHAPES:
    model = models.get_model(name, num_classes=3)
    _SHAPES[name] = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False))
  return _SHAPES[name]


def _trees(name, seed=0):
  """(params, batch_stats) as shapes, with a real, recognisable head."""
  shapes = _shapes(name)
  params = dict(shapes["params"])
  rng = np.random.default_rng(seed)
  params["head"] = {k: jnp.asarray(rng.normal(size=v.shape), v.dtype) for k, v in params["head"].items()}
  return params, shapes["batch_stats"]


def _write_synthetic(path, keys, seed=0, rgb_stem=True):
  """A safetensors file of random tensors named and shaped by `keys`, plus torch's BN step counters."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for k, shape in keys.items():
    if not rgb_stem and k in ("conv1.weight", "features.conv0.weight"):
      shape = (shape[0], 1) + shape[2:]
    value = rng.uniform(0.5, 1.5, shape) if k.endswith("running_var") else rng.normal(size=shape)
    tensors[k] = value.astype(np.float32)
    if k.endswith("running_var"):
      tensors[k[:-len("running_var")] + "num_batches_tracked"] = np.array(7, np.int64)
  safetensors_numpy.save_file(tensors, str(path))
  return tensors


# ---------------------------------------------------------------------------------------------------------------
# Without torch.


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_expected_keys_are_torchvisions(name):
  params, batch_stats = _trees(name)
  want = {k: v for k, v in TORCHVISION_KEYS[name]().items() if not k.startswith(("fc.", "classifier."))}
  got = {k: shape for k, (_, _, shape) in weights.expected_keys(name, params, batch_stats).items()}
  stem = "conv1.weight" if name.startswith("resnet") else "features.conv0.weight"
  want[stem] = (64, 1, 7, 7)  # the one-channel stem
  assert got == want


@pytest.mark.parametrize("name", ["resnet101", "resnet152", "densenet169", "resnet34"])
def test_expected_keys_cover_the_deep_nets(name):
  params, batch_stats = _trees(name)
  got = weights.expected_keys(name, params, batch_stats)
  want = TORCHVISION_KEYS[name]()
  assert set(got) == {k for k in want if not k.startswith(("fc.", "classifier."))}
  trunk = sum(int(np.prod(shape)) for _, c, shape in got.values() if c == "params")
  classifier = sum(int(np.prod(s)) for k, s in want.items() if k.startswith(("fc.", "classifier.")))
  assert trunk == TORCHVISION_PARAMS[name] - classifier - 2 * 64 * 7 * 7


def test_resnet18_import_maps_transposes_and_folds(tmp_path):
  path = tmp_path / "resnet18.safetensors"
  tensors = _write_synthetic(path, TORCHVISION_KEYS["resnet18"]())
  params, batch_stats = _trees("resnet18")
  new_params, new_stats = weights.import_pretrained(path, model_name="resnet18", params=params,
                                                    batch_stats=batch_stats)
  # Same structure, shapes and dtypes as given.
  for given, got in ((params, new_params), (batch_stats, new_stats)):
    assert jax.tree.structure(given) == jax.tree.structure(got)
    assert [(x.shape, x.dtype) for x in jax.tree.leaves(given)] == [(x.shape, x.dtype) for x in jax.tree.leaves(got)]
  # A known kernel element lands where expected: torch [o, i, h, w] -> Flax [h, w, i, o]; layer3.1 is block 5.
  assert new_params["BasicBlock_5"]["Conv_1"]["kernel"][0, 2, 7, 5] == tensors["layer3.1.conv2.weight"][5, 7, 0, 2]
  np.testing.assert_array_equal(new_params["BasicBlock_2"]["conv_proj"]["kernel"],
                                tensors["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(new_params["BasicBlock_7"]["Conv_1"]["kernel"],
                                tensors["layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
  # The RGB stem is folded: the grey kernel is the sum over the colour channels.
  np.testing.assert_allclose(new_params["conv_init"]["kernel"][..., 0, :],
                             tensors["conv1.weight"].sum(axis=1).transpose(1, 2, 0), rtol=1e-6)
  # BatchNorm: weight/bias are params (scale/bias), running mean/var are batch_stats.
  np.testing.assert_array_equal(new_params["bn_init"]["scale"], tensors["bn1.weight"])
  np.testing.assert_array_equal(new_params["bn_init"]["bias"], tensors["bn1.bias"])
  np.testing.assert_array_equal(new_stats["bn_init"]["mean"], tensors["bn1.running_mean"])
  np.testing.assert_array_equal(new_stats["bn_init"]["var"], tensors["bn1.running_var"])
  np.testing.assert_array_equal(new_stats["BasicBlock_4"]["norm_proj"]["var"],
                                tensors["layer3.0.downsample.1.running_var"])
  np.testing.assert_array_equal(new_params["BasicBlock_1"]["BatchNorm_1"]["scale"], tensors["layer1.1.bn2.weight"])
  # The head is the model's own, not ImageNet's classifier.
  assert new_params["head"]["kernel"] is params["head"]["kernel"]
  assert new_params["head"]["bias"] is params["head"]["bias"]
  # Every tensor of the file but the classifier and counters went somewhere, unchanged but for the layout.
  used = {tuple(np.asarray(x).ravel()[:3]) for x in jax.tree.leaves((new_params, new_stats))}
  for k, v in tensors.items():
    if not k.startswith("fc.") and not k.endswith("num_batches_tracked") and k != "conv1.weight":
      assert tuple(v.transpose(2, 3, 1, 0).ravel()[:3] if v.ndim == 4 else v.ravel()[:3]) in used, k


def test_resnet50_bottleneck_mapping(tmp_path):
  path = tmp_path / "resnet50.safetensors"
  tensors = _write_synthetic(path, TORCHVISION_KEYS["resnet50"](), seed=1, rgb_stem=False)
  params, batch_stats = _trees("resnet50")
  new_params, new_stats = weights.import_pretrained(path, model_name="resnet50", params=params,
                                                    batch_stats=batch_stats)
  # layer1.0 has a projection (64 -> 256 channels); block 3 is layer2.0, block 13 is layer4.0.
  np.testing.assert_array_equal(new_params["BottleneckBlock_0"]["conv_proj"]["kernel"][0, 0],
                                tensors["layer1.0.downsample.0.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(new_params["BottleneckBlock_3"]["Conv_2"]["kernel"][0, 0],
                                tensors["layer2.0.conv3.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(new_stats["BottleneckBlock_13"]["BatchNorm_2"]["mean"],
                                tensors["layer4.0.bn3.running_mean"])
  # A one-channel stem in the file is taken as it is.
  np.testing.assert_array_equal(new_params["conv_init"]["kernel"], tensors["conv1.weight"].transpose(2, 3, 1, 0))


def test_half_precision_files_import_as_the_models_dtypes(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  path = tmp_path / "half.safetensors"
  tensors = _write_synthetic(path, TORCHVISION_KEYS["resnet18"](), seed=4)
  half = {k: v.astype(ml_dtypes.bfloat16 if "layer" in k else np.float16) if v.dtype == np.float32 else v
          for k, v in tensors.items()}
  safetensors_numpy.save_file(half, str(path))
  params, batch_stats = _trees("resnet18")
  new_params, new_stats = weights.import_pretrained(path, model_name="resnet18", params=params,
                                                    batch_stats=batch_stats)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((new_params, new_stats)))
  np.testing.assert_array_equal(new_stats["BasicBlock_3"]["BatchNorm_0"]["mean"],
                                half["layer2.1.bn1.running_mean"].astype(np.float32))
  np.testing.assert_array_equal(new_params["bn_init"]["scale"], half["bn1.weight"].astype(np.float32))


def test_densenet121_import_with_legacy_and_dataparallel_names(tmp_path):
  keys = TORCHVISION_KEYS["densenet121"]()
  path = tmp_path / "densenet121.safetensors"
  tensors = _write_synthetic(path, keys, seed=2)
  # Old torchvision checkpoints spell `norm.1` for `norm1`; DataParallel adds `module.`.
  legacy = {"module." + k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
            for k, v in tensors.items()}
  legacy_path = tmp_path / "legacy.safetensors"
  safetensors_numpy.save_file(legacy, str(legacy_path))
  params, batch_stats = _trees("densenet121")
  results = [weights.import_pretrained(p, model_name="densenet121", params=params, batch_stats=batch_stats)
             for p in (path, legacy_path)]
  for new_params, new_stats in results:
    layer = new_params["denseblock3"]["denselayer24"]
    assert layer["conv2"]["kernel"][1, 2, 100, 31] == tensors[
        "features.denseblock3.denselayer24.conv2.weight"][31, 100, 1, 2]
    np.testing.assert_array_equal(layer["norm1"]["scale"], tensors["features.denseblock3.denselayer24.norm1.weight"])
    np.testing.assert_array_equal(new_stats["transition2"]["norm"]["mean"],
                                  tensors["features.transition2.norm.running_mean"])
    np.testing.assert_array_equal(new_params["transition3"]["conv"]["kernel"][0, 0],
                                  tensors["features.transition3.conv.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(new_stats["norm_final"]["var"], tensors["features.norm5.running_var"])
    np.testing.assert_array_equal(new_params["bn_init"]["bias"], tensors["features.norm0.bias"])
    np.testing.assert_allclose(new_params["conv_init"]["kernel"][..., 0, :],
                               tensors["features.conv0.weight"].sum(axis=1).transpose(1, 2, 0), rtol=1e-6)
    assert new_params["head"]["kernel"] is params["head"]["kernel"]
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_array_equal(a, b)


def test_errors_list_every_missing_unexpected_and_mismatched_key(tmp_path):
  keys = TORCHVISION_KEYS["resnet18"]()
  del keys["layer2.1.conv1.weight"], keys["bn1.running_var"]
  keys["layer5.0.conv1.weight"] = (3, 3, 1, 1)
  keys["extra.bias"] = (4,)
  keys["layer3.0.conv2.weight"] = (256, 256, 1, 1)
  keys["conv1.weight"] = (64, 2, 7, 7)  # neither one channel nor three
  keys["fc.weight"] = (10, 512)  # a classifier of any size is ignored
  path = tmp_path / "broken.safetensors"
  _write_synthetic(path, keys)
  params, batch_stats = _trees("resnet18")
  with pytest.raises(weights.WeightImportError) as info:
    weights.import_pretrained(path, model_name="resnet18", params=params, batch_stats=batch_stats)
  err = info.value
  assert isinstance(err, ValueError)
  assert err.missing == ["bn1.running_var", "layer2.1.conv1.weight"]
  assert err.unexpected == ["extra.bias", "layer5.0.conv1.weight"]
  assert [m[0] for m in err.mismatched] == ["conv1.weight", "layer3.0.conv2.weight"]
  assert ("layer3.0.conv2.weight", (256, 256, 1, 1), (256, 256, 3, 3)) in err.mismatched
  message = str(err)
  assert str(path) in message and "resnet18" in message
  for k in ("bn1.running_var", "layer2.1.conv1.weight", "extra.bias", "layer5.0.conv1.weight",
            "layer3.0.conv2.weight", "conv1.weight"):
    assert k in message
  assert "fc.weight" not in message and "num_batches_tracked" not in message


def test_a_resnet_file_does_not_fit_a_densenet(tmp_path):
  path = tmp_path / "resnet18.safetensors"
  _write_synthetic(path, TORCHVISION_KEYS["resnet18"]())
  params, batch_stats = _trees("densenet121")
  with pytest.raises(ValueError, match="604 missing") as info:
    weights.import_pretrained(path, model_name="densenet121", params=params, batch_stats=batch_stats)
  assert "layer1.0.conv1.weight" in str(info.value) and "features.norm5.weight" in str(info.value)


def test_unknown_model_name_is_a_value_error():
  params, batch_stats = _trees("resnet18")
  with pytest.raises(ValueError, match="densenet121"):
    weights.expected_keys("vgg16", params, batch_stats)


def test_converter_without_torch_says_how_to_install_it(tmp_path):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed")
  src = tmp_path / "model.pth"
  src.write_bytes(b"not really")
  result = subprocess.run([sys.executable, "-m", "jaxcxr.convert_weights", "--input", str(src),
                           "--output", str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
  assert result.returncode != 0
  assert "pip install torch" in result.stderr
  assert not (tmp_path / "out.safetensors").exists()


def test_converter_help_names_its_flags():
  result = subprocess.run([sys.executable, "-m", "jaxcxr.convert_weights", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120, check=False)
  # (absl exits with status 1 after --help.)
  for flag in ("--input", "--output", "--trust_pickle", "--check_model", "safetensors"):
    assert flag in result.stdout


# ---------------------------------------------------------------------------------------------------------------
# With torch and torchvision (skipped where they are not installed).


@pytest.fixture(scope="module")
def torch_modules():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.set_num_threads(1)
  return torch, torchvision


def _random_torchvision(torch, torchvision, name, seed=0):
  """A torchvision network with random weights, random BN statistics and affine parameters, in eval mode."""
  torch.manual_seed(seed)
  net = getattr(torchvision.models, name)(weights=None)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.2, 0.7)  # below 1 keeps the residual stream O(1) through 16 bottlenecks
        m.bias.normal_(0, 0.1)
  return net.eval()


def _torch_features(torch, net, grey):
  """torchvision's pooled features of the grey image repeated to three channels."""
  if hasattr(net, "fc"):
    net.fc = torch.nn.Identity()
  else:
    net.classifier = torch.nn.Identity()
  rgb = np.repeat(grey, 3, axis=-1).transpose(0, 3, 1, 2)
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(rgb))).numpy()


def _flax_features(name, path, grey):
  model = models.get_model(name, num_classes=3)
  params, batch_stats = _trees(name)
  params, batch_stats = weights.import_pretrained(path, model_name=name, params=params, batch_stats=batch_stats)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[1]["pre_logits"])
  return np.asarray(apply({"params": params, "batch_stats": batch_stats}, grey))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_imported_features_equal_torchvisions(torch_modules, tmp_path, name):
  torch, torchvision = torch_modules
  from safetensors import torch as safetensors_torch  # pylint: disable=g-import-not-at-top
  net = _random_torchvision(torch, torchvision, name)
  path = tmp_path / f"{name}.safetensors"
  safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
  grey = np.random.default_rng(0).normal(size=(2, 64, 64, 1)).astype(np.float32)
  want = _torch_features(torch, net, grey)
  got = _flax_features(name, path, grey)
  assert got.shape == want.shape and got.dtype == np.float32
  assert want.std() > 0.05  # the comparison is not between two near-constant vectors
  diff = float(np.abs(got - want).max())
  print(f"{name}: max |flax - torchvision| = {diff:.3g} (features up to {np.abs(want).max():.3g})")
  assert diff <= 1e-4, (
      f"{name}: max abs difference {diff}. If only ResNets fail, check that their 3x3 convolutions pad "
      "((1, 1), (1, 1)) as PyTorch does: 'SAME' pads stride-2 convolutions (0, 1) on even inputs.")


def test_converter_reads_state_dicts_checkpoints_and_pickled_models(torch_modules, tmp_path):
  torch, torchvision = torch_modules
  from jaxcxr import convert_weights  # pylint: disable=g-import-not-at-top
  net = _random_torchvision(torch, torchvision, "resnet18", seed=3)
  state = net.state_dict()
  torch.save(state, tmp_path / "plain.pth")
  torch.save({"epoch": 3, "state_dict": state}, tmp_path / "checkpoint.pth")
  torch.save(net, tmp_path / "whole.pth")
  for src in ("plain", "checkpoint"):
    assert convert_weights.convert(str(tmp_path / f"{src}.pth"), str(tmp_path / f"{src}.safetensors")) == len(state)
  with pytest.raises(convert_weights.ConversionError, match="--trust_pickle"):
    convert_weights.convert(str(tmp_path / "whole.pth"), str(tmp_path / "whole.safetensors"))
  convert_weights.convert(str(tmp_path / "whole.pth"), str(tmp_path / "whole.safetensors"), trust_pickle=True)
  for src in ("plain", "checkpoint", "whole"):
    loaded = safetensors_numpy.load_file(str(tmp_path / f"{src}.safetensors"))
    assert set(loaded) == set(state)
    for k, v in state.items():
      np.testing.assert_array_equal(loaded[k], v.numpy())
  # The import check behind --check_model.
  convert_weights.check(str(tmp_path / "plain.safetensors"), "resnet18")
  with pytest.raises(weights.WeightImportError):
    convert_weights.check(str(tmp_path / "plain.safetensors"), "resnet34")
  # The command line.
  result = subprocess.run([sys.executable, "-m", "jaxcxr.convert_weights", "--input", str(tmp_path / "plain.pth"),
                           "--output", str(tmp_path / "cli.safetensors")],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert f"Wrote {len(state)} tensors" in result.stdout
  assert set(safetensors_numpy.load_file(str(tmp_path / "cli.safetensors"))) == set(state)

"""Models, chosen by name from `config.model.name`."""

from jaxcxr.models import densenet
from jaxcxr.models import resnet

MODELS = {
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet152": resnet.ResNet152,
    "resnet10_w16": resnet.ResNet10W16,
    "resnet_tiny": resnet.ResNetTiny,
    "densenet121": densenet.DenseNet121,
    "densenet169": densenet.DenseNet169,
}


def get_model(name, **kwargs):
  """Returns the Flax module `name` built with `kwargs` (num_classes, dtype, head_bias_init)."""
  if name not in MODELS:
    raise ValueError(f"Unknown model.name {name!r}; choose one of {sorted(MODELS)}.")
  return MODELS[name](**kwargs)

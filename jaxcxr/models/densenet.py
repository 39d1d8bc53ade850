"""Flax (Linen) DenseNet-BC for one-channel chest radiographs.

The layout follows the DenseNet-BC of Huang et al. as torchvision builds it, so that torchvision/timm ImageNet
weights map one to one (see `jaxcxr.models.weights`):

  stem:        7x7/2 convolution -> BatchNorm -> ReLU -> 3x3/2 max pool
  dense layer: BN -> ReLU -> 1x1 conv (bn_size * growth) -> BN -> ReLU -> 3x3 conv (growth), its output
               concatenated to its input along the channels
  transition:  BN -> ReLU -> 1x1 conv (halves the channels) -> 2x2/2 average pool
  end:         BatchNorm -> ReLU -> global average pool -> Dense head

Sub-modules carry torchvision's names (`denseblock1/denselayer1/norm1`, `transition1/conv`, ...); the stem is
`conv_init` / `bn_init` as in the ResNet, the final norm `norm_final` and the head `head`. Padding is written
out explicitly (not 'SAME') so that every window lines up with PyTorch's for any input size.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcxr.models import common

ModuleDef = Any


class DenseLayer(nn.Module):
  """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3; returns only the `growth_rate` new channels."""
  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name="norm1")(x))
    y = self.conv(self.bn_size * self.growth_rate, (1, 1), padding="VALID", name="conv1")(y)
    y = nn.relu(self.norm(name="norm2")(y))
    return self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)


class DenseBlock(nn.Module):
  """`num_layers` dense layers, each seeing the concatenation of the block input and all earlier outputs."""
  num_layers: int
  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      new = DenseLayer(self.growth_rate, self.bn_size, conv=self.conv, norm=self.norm,
                       name=f"denselayer{i + 1}")(x)
      x = jnp.concatenate([x, new], axis=-1)
    return x


class Transition(nn.Module):
  """BN-ReLU-Conv1x1 to `features` channels, then a 2x2 stride-2 average pool."""
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm(name="norm")(x))
    x = self.conv(self.features, (1, 1), padding="VALID", name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class DenseNet(nn.Module):
  """DenseNet-BC with a one-channel stem.

  Attributes:
    block_config: dense layers per block (4 blocks for the canonical nets).
    num_classes: outputs of the linear head (one logit per finding).
    growth_rate: channels each dense layer adds (k in the paper).
    bn_size: bottleneck width multiplier: the 1x1 convolution makes bn_size * growth_rate channels.
    num_init_features: channels of the stem convolution.
    dtype: compute dtype (bfloat16 on GPU/TPU, float32 on CPU); parameters stay float32.
    head_bias_init: optional (num_classes,) initial head bias, e.g. each class's log prior odds.
    bn_axis_name: mesh axis BatchNorm averages its statistics over inside shard_map (None under jit).
  """
  block_config: Sequence[int]
  num_classes: int
  growth_rate: int = 32
  bn_size: int = 4
  num_init_features: int = 64
  dtype: Any = jnp.float32
  head_bias_init: Any = None
  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv, norm = common.layers(dtype=self.dtype, train=train, bn_axis_name=self.bn_axis_name)
    x = common.stem(x, features=self.num_init_features, conv=conv, norm=norm, dtype=self.dtype)
    channels = self.num_init_features
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, conv=conv, norm=norm,
                     name=f"denseblock{i + 1}")(x)
      channels += num_layers * self.growth_rate
      if i != len(self.block_config) - 1:
        channels //= 2
        x = Transition(channels, conv=conv, norm=norm, name=f"transition{i + 1}")(x)
    x = nn.relu(norm(name="norm_final")(x))
    return common.pool_and_head(x, num_classes=self.num_classes, head_bias_init=self.head_bias_init)


DenseNet121 = functools.partial(DenseNet, block_config=(6, 12, 24, 16))
DenseNet169 = functools.partial(DenseNet, block_config=(6, 12, 32, 32))

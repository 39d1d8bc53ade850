"""Flax (Linen) ResNets for one-channel chest radiographs.

ResNet-18/34 use basic blocks, ResNet-50/101/152 bottleneck blocks (torchvision's "v1.5": the stride sits
in the 3x3 convolution). Strided convolutions pad (1, 1) like PyTorch, not Flax's 'SAME' (0, 1) on even
sizes, so imported torchvision/timm weights give the same features. The stem takes a single grey channel. `__call__(x, train=...)`
returns (logits, {'pre_logits', 'feature_map'}) (see common.pool_and_head).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcxr.models import common

ModuleDef = Any


class BasicBlock(nn.Module):
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1)))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="conv_proj")(x)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1)))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides), name="conv_proj")(x)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet with a configurable depth and width.

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: BasicBlock or BottleneckBlock.
    num_classes: outputs of the linear head (one logit per finding).
    num_filters: width of the first stage (64 for the canonical nets).
    dtype: compute dtype (bfloat16 on GPU/TPU, float32 on CPU); parameters stay float32.
    head_bias_init: optional (num_classes,) initial head bias, e.g. each class's log prior odds so that
      rare classes start calibrated instead of at p = 0.5.
    bn_axis_name: mesh axis BatchNorm averages its statistics over inside shard_map (None under jit).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  num_filters: int = 64
  dtype: Any = jnp.float32
  head_bias_init: Any = None
  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv, norm = common.layers(dtype=self.dtype, train=train, bn_axis_name=self.bn_axis_name)
    x = common.stem(x, features=self.num_filters, conv=conv, norm=norm, dtype=self.dtype)
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.num_filters * 2**i, conv=conv, norm=norm, strides=strides)(x)
    return common.pool_and_head(x, num_classes=self.num_classes, head_bias_init=self.head_bias_init)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)
# Narrow, shallow nets for CPU: the demo trains `resnet10_w16` in minutes on 2 cores; tests use the tiny one.
ResNet10W16 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, num_filters=16)
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), block_cls=BasicBlock, num_filters=8)

"""Pieces every jaxcxr network shares: layer factories, the one-channel stem and the classifier head.

They are called from inside a module's `@nn.compact` method, so the layers they create belong to it
(with the names given here: `conv_init`, `bn_init`, `head`, which the weight import relies on).
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from jaxcxr.models import conv as conv_lib
from jaxcxr.models import pooling


def layers(*, dtype, train, bn_axis_name=None):
  """(conv, norm) factories: bias-free convolutions; BatchNorm with PyTorch's momentum and epsilon.

  The convolutions go through `jaxcxr.models.conv.conv_general_dilated`: XLA's own, except on CPU for
  tiny output maps, where the same sums run as one matmul (parameters and results unchanged).

  Under jit with a batch-sharded input, XLA computes the batch statistics over the global batch. Inside
  shard_map each device sees only its shard: `bn_axis_name` (the mesh axis, 'data') makes BatchNorm
  average its training statistics over that axis. Parameters and their names do not depend on it.
  """
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype,
                           conv_general_dilated=conv_lib.conv_general_dilated)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=dtype, axis_name=bn_axis_name)
  return conv, norm


def stem(x, *, features, conv, norm, dtype):
  """7x7/2 convolution of the grey image, BatchNorm, ReLU, 3x3/2 max-pool (torchvision's padding).

  The pool is `jaxcxr.models.pooling.max_pool`: Flax's values and gradients, with a backward that is
  fast on XLA:CPU.
  """
  x = x.astype(dtype)
  x = conv(features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv_init")(x)
  x = nn.relu(norm(name="bn_init")(x))
  return pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))


def pool_and_head(x, *, num_classes, head_bias_init):
  """(logits, aux): the linear head on the globally average-pooled float32 features, and
  aux = {'pre_logits': those pooled features (B, C), 'feature_map': the last stage's map (B, h, w, C)}.

  As big_vision's models do, one call gives both: stages that need the features (embedding export,
  heatmaps) use aux, the step uses the logits. `head_bias_init` (num_classes,) sets the initial bias,
  e.g. log prior odds so rare classes start calibrated; None starts at zero.
  """
  feature_map = x
  pre_logits = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
  bias_init = nn.initializers.zeros_init()
  if head_bias_init is not None:
    bias = jnp.asarray(head_bias_init, jnp.float32)
    bias_init = lambda *_: bias
  logits = nn.Dense(num_classes, bias_init=bias_init, name="head")(pre_logits)
  return logits, {"pre_logits": pre_logits, "feature_map": feature_map}

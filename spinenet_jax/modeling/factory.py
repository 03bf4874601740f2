"""Model settings from `ml_collections` configs (see `configs/base.py` for the fields).

The detectors (`spinenet_jax/detectors/`) build their modules from these."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from spinenet_jax.losses import LossConfig, MaskRCNNLossConfig
from spinenet_jax.modeling import layers
from spinenet_jax.modeling.maskrcnn import MaskRCNN, MaskRCNNConfig
from spinenet_jax.modeling.maskrcnn_heads import FastRcnnHeadConfig, MaskHeadConfig, RpnHeadConfig
from spinenet_jax.modeling.retinanet import HeadConfig, RetinaNet, RetinaNetConfig
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig
from spinenet_jax.ops.anchors import AnchorConfig
from spinenet_jax.ops.postprocess import DetectionConfig

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}


def compute_dtype(name: str) -> Any:
  if name not in DTYPES:
    raise ValueError(f'config.model.dtype must be one of {sorted(DTYPES)}, got {name!r}.')
  return DTYPES[name]


def backbone_config(model_config) -> SpineNetConfig:
  """SpineNetConfig from `config.model` (backbone fields left None come from the scaling map)."""
  b = dict(model_config.backbone)
  if b.get('block_specs') is not None:
    b['block_specs'] = [tuple(s) for s in b['block_specs']]
  else:
    b.pop('block_specs', None)
  model_id = b.pop('model_id')
  norm = layers.NormConfig(**dict(model_config.norm))
  return SpineNetConfig.from_model_id(model_id, norm=norm, **b)


def build_backbone(model_config) -> SpineNet:
  return build_backbone_from(backbone_config(model_config), model_config.dtype)


def build_backbone_from(config: SpineNetConfig, dtype: str = 'float32') -> SpineNet:
  """The SpineNet of `config` computing in the dtype named `dtype`."""
  return SpineNet(config, dtype=compute_dtype(dtype))


def retinanet_config(model_config) -> RetinaNetConfig:
  """RetinaNetConfig from `config.model` (backbone, norm, head, anchors)."""
  backbone = backbone_config(model_config)
  anchors = dict(model_config.anchors)
  anchors['aspect_ratios'] = tuple(anchors['aspect_ratios'])
  head = dict(model_config.head)
  norm_type = head.pop('norm_type', None)
  if norm_type is not None:
    head['norm'] = layers.NormConfig(**dict(model_config.norm, type=norm_type))
  return RetinaNetConfig(backbone, HeadConfig(**head),
                         AnchorConfig(min_level=backbone.min_level, max_level=backbone.max_level,
                                      **anchors))


def maskrcnn_config(model_config) -> MaskRCNNConfig:
  """MaskRCNNConfig from `config.model` (backbone, norm, rpn/frcnn/mask heads, anchors)."""
  backbone = backbone_config(model_config)
  anchors = dict(model_config.anchors, aspect_ratios=tuple(model_config.anchors.aspect_ratios))
  return MaskRCNNConfig(backbone, RpnHeadConfig(**dict(model_config.rpn_head)),
                        FastRcnnHeadConfig(**dict(model_config.frcnn_head)),
                        MaskHeadConfig(**dict(model_config.mask_head)),
                        AnchorConfig(min_level=backbone.min_level, max_level=backbone.max_level,
                                     **anchors), model_config.num_classes)


def maskrcnn_loss_config(config) -> MaskRCNNLossConfig:
  keys = ('rpn_huber_delta', 'frcnn_huber_delta', 'normalizer_group_size')
  return MaskRCNNLossConfig(rpn_batch_size_per_im=config.rpn.batch_size_per_im,
                            **{k: config.loss[k] for k in keys})


def loss_config(config) -> LossConfig:
  return LossConfig(num_classes=config.model.head.num_classes, **dict(config.loss))


def detection_config(config) -> DetectionConfig:
  return DetectionConfig(**dict(config.postprocess))


def model_from_config(config: SpineNetConfig | RetinaNetConfig, dtype: Any = jnp.float32):
  """The module for a config object (e.g. one `model_io.load_model` returned)."""
  if isinstance(config, RetinaNetConfig):
    return RetinaNet(config, dtype)
  if isinstance(config, MaskRCNNConfig):
    return MaskRCNN(config, dtype)
  return SpineNet(config, dtype)

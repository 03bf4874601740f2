"""Mask R-CNN settings read from an official TF1 checkpoint, and its name map.

A Mask R-CNN checkpoint is recognized by its `rpn_head/` variables. The heads' sizes are read from
the variables themselves (the RPN's conv count: the released SpineNet-190 checkpoint has the
pre-2020-06 one-conv RPN while its yaml says 7; the Fast R-CNN and mask heads' convs, FCs and
widths; the class count); what a checkpoint cannot tell defaults to the SpineNet Mask R-CNN yamls:
relu (190: swish), batch norm momentum 0.99 / epsilon 1e-3, explicit stride-2 padding, anchor
size 3 (190: 5), one anchor scale with aspect ratios 1, 2, 0.5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from spinenet_jax.modeling import block_specs, layers
from spinenet_jax.modeling.maskrcnn import MaskRCNNConfig, mask_anchor_config
from spinenet_jax.modeling.maskrcnn_heads import FastRcnnHeadConfig, MaskHeadConfig, RpnHeadConfig
from spinenet_jax.modeling.spinenet import SpineNetConfig


def is_maskrcnn(tensors: Mapping) -> bool:
  return any(name.startswith('rpn_head/') for name in tensors)


def _count(tensors: Mapping, pattern: str) -> int:
  return sum(1 for name in tensors if re.fullmatch(pattern, name))


def _shape(tensors: Mapping, name: str) -> tuple[int, ...]:
  if name not in tensors:
    raise ValueError(f'the checkpoint has rpn_head/ variables but no {name}: not an official '
                     'Mask R-CNN checkpoint.')
  return tuple(np.shape(tensors[name]))


def config_from_checkpoint(tensors: Mapping, model_id: str, activation: str | None = None,
                           bn_momentum: float | None = None, bn_epsilon: float | None = None,
                           endpoints_num_filters: int | None = None,
                           anchor_size: float | None = None) -> tuple[MaskRCNNConfig, dict]:
  """(the Mask R-CNN config of an official TF1 checkpoint, the settings read from it)."""
  model_id = block_specs.normalize_model_id(model_id)
  norm = layers.NormConfig(momentum=0.99 if bn_momentum is None else bn_momentum,
                           epsilon=1e-3 if bn_epsilon is None else bn_epsilon)
  default_activation = 'swish' if model_id == '190' else 'relu'
  backbone = SpineNetConfig.from_model_id(model_id, activation=activation or default_activation,
                                          norm=norm, endpoints_num_filters=endpoints_num_filters)
  rpn_kernel = _shape(tensors, 'rpn_head/rpn/kernel')
  fc6 = _shape(tensors, 'fast_rcnn_head/fc6/kernel')
  read = {
      'rpn_head': dict(num_convs=1 + _count(tensors, r'rpn_head/rpn-\d+/kernel'),
                       num_filters=rpn_kernel[-1]),
      'frcnn_head': dict(num_convs=_count(tensors, r'fast_rcnn_head/conv_\d+/kernel'),
                         num_filters=_shape(tensors, 'fast_rcnn_head/conv_0/kernel')[-1],
                         num_fcs=_count(tensors, r'fast_rcnn_head/fc\d+/kernel'),
                         fc_dims=fc6[-1]),
      'mask_head': dict(num_convs=_count(tensors, r'mask_head/mask-conv-l\d+/kernel'),
                        num_filters=_shape(tensors, 'mask_head/conv5-mask/kernel')[-2]),
      'num_classes': _shape(tensors, 'fast_rcnn_head/class-predict/kernel')[-1],
      'endpoints_num_filters': rpn_kernel[-2],
  }
  if endpoints_num_filters is None and read['endpoints_num_filters'] != (
      backbone.endpoints_num_filters):
    backbone = SpineNetConfig.from_model_id(
        model_id, activation=backbone.activation, norm=norm,
        endpoints_num_filters=read['endpoints_num_filters'])
  size = anchor_size if anchor_size is not None else (5.0 if model_id == '190' else 3.0)
  config = MaskRCNNConfig(
      backbone, RpnHeadConfig(**read['rpn_head']), FastRcnnHeadConfig(**read['frcnn_head']),
      MaskHeadConfig(**read['mask_head']),
      mask_anchor_config(backbone.min_level, backbone.max_level, size), read['num_classes'])
  settings = dict(read, activation=backbone.activation, bn_momentum=norm.momentum,
                  bn_epsilon=norm.epsilon, anchor_size=size)
  return config, settings

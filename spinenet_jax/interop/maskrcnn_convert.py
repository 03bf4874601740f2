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

import jax
import jax.numpy as jnp
import numpy as np

from spinenet_jax.modeling import block_specs, layers
from spinenet_jax.modeling.maskrcnn import MaskRCNN, MaskRCNNConfig, mask_anchor_config
from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import proposals as proposal_ops
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


def dump_features(config: MaskRCNNConfig, variables: dict, images: np.ndarray,
                  rois: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Inference-mode outputs to compare with the official graph, in the images' dtype (float64
  needs `jax_enable_x64`; the weights are cast to it):
  level{l} endpoints; rpn_score_level{l} [B, h, w, A], rpn_box_level{l} [B, h, w, 4A] (raw);
  proposals [B, 1000, 4] and proposal_scores [B, 1000] (test settings, input pixels); with `rois`
  [B, N, 4] float32 (input pixels): frcnn_class [B, N, C], frcnn_box [B, N, 4C] and mask_logits
  [B, N, 28, 28, C] (every class). RoIAlign's grid runs in float32, the RoIs' dtype, as official.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype not in (np.float32, np.float64):
    raise ValueError(f'--dump_features input must be float32 or float64 NHWC with 3 channels, '
                     f'got {images.dtype} {images.shape}.')
  dtype = jnp.dtype(images.dtype)
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError('float64 dumps need jax_enable_x64 (the tool sets it for '
                     '--dump_dtype=float64).')
  variables = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), variables)
  model = MaskRCNN(config, dtype=dtype)
  size = images.shape[1:3]
  per_level = anchor_ops.unpack_levels(anchor_ops.generate_anchors(config.anchors, size),
                                       config.anchors, size)

  @jax.jit
  def run(variables, images, rois):
    def forward(m):
      features, scores, boxes = m.backbone_and_rpn(images)
      canvas = jnp.broadcast_to(jnp.asarray(size, jnp.float32), (images.shape[0], 2))
      props, props_scores = proposal_ops.multilevel_propose_rois(
          scores, boxes, per_level, canvas, pre_nms_top_k=1000, post_nms_top_k_per_level=1000,
          nms_iou_threshold=0.7, total_top_k=1000)
      out = {**{f'level{k}': v for k, v in features.items()},
             **{f'rpn_score_level{k}': v for k, v in scores.items()},
             **{f'rpn_box_level{k}': v for k, v in boxes.items()},
             'proposals': props, 'proposal_scores': props_scores}
      if rois is not None:
        out['frcnn_class'], out['frcnn_box'] = m.box_head(features, rois)
        out['mask_logits'] = m.mask_head(features, rois, None)
      return out
    return model.apply(variables, method=forward)

  rois = None if rois is None else jnp.asarray(rois, jnp.float32)
  return {k: np.asarray(v) for k, v in run(variables, jnp.asarray(images), rois).items()}

"""Checkpoint names of the Mask R-CNN heads in the official TF1 graph (`heads.RpnHead`,
`FastrcnnHead`, `MaskrcnnHead`; the list is `tests/data/official/mrcnn_heads_vars_*.txt`).

- `rpn_head/rpn`, `rpn-{i}` (i > 0): the shared convs; `rpn-l{level}-bn` (suffix `-{i}` for i > 0):
  the per-level batch norms; `rpn-class`, `rpn-box`.
- `fast_rcnn_head/conv_{i}`, `fc{6 + j}`, `class-predict`, `box-predict`; their batch norms are
  unnamed Keras layers, numbered in creation order within the scope: `batch_normalization`,
  `batch_normalization_1`, ... (the convs' first, then the FCs').
- `mask_head/mask-conv-l{i}`, `conv5-mask` (transposed conv, TF kernel layout [kh, kw, out, in],
  which Flax's `ConvTranspose(transpose_kernel=True)` stores as is), `mask_fcn_logits`; batch
  norms numbered the same way within `mask_head`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from spinenet_jax.interop.tf_checkpoint import bn_names

Path = tuple[str, ...]


def _dense(tf_base: str, ours: Path) -> dict[str, tuple[str, Path]]:
  return {f'{tf_base}/kernel': ('params', ours + ('kernel',)),
          f'{tf_base}/bias': ('params', ours + ('bias',))}


def _bn_scope(k: int) -> str:
  return 'batch_normalization' if k == 0 else f'batch_normalization_{k}'


def _count(keys, pattern: str) -> int:
  return sum(1 for k in keys if re.fullmatch(pattern, k))


def rpn_names(params: Mapping) -> dict[str, tuple[str, Path]]:
  rpn = params['rpn']
  num_convs = 1 + _count(rpn, r'rpn_\d+')
  levels = sorted(int(m.group(1)) for k in rpn if (m := re.fullmatch(r'rpn_l(\d+)_bn', k)))
  names = {}
  for i in range(num_convs):
    names.update(_dense('rpn_head/rpn' + ('' if i == 0 else f'-{i}'),
                        ('rpn', 'rpn' if i == 0 else f'rpn_{i}')))
    for level in levels:
      names.update(bn_names(f'rpn_head/rpn-l{level}-bn' + ('' if i == 0 else f'-{i}'),
                            ('rpn', f'rpn_l{level}_bn' + ('' if i == 0 else f'_{i}'), 'bn')))
  names.update(_dense('rpn_head/rpn-class', ('rpn', 'rpn_class')))
  names.update(_dense('rpn_head/rpn-box', ('rpn', 'rpn_box')))
  return names


def fast_rcnn_names(params: Mapping) -> dict[str, tuple[str, Path]]:
  head = params['frcnn']
  names, bn = {}, 0
  for i in range(_count(head, r'conv_\d+')):
    names.update(_dense(f'fast_rcnn_head/conv_{i}', ('frcnn', f'conv_{i}')))
    names.update(bn_names(f'fast_rcnn_head/{_bn_scope(bn)}', ('frcnn', f'conv_{i}_bn', 'bn')))
    bn += 1
  for j in range(_count(head, r'fc\d+')):
    names.update(_dense(f'fast_rcnn_head/fc{6 + j}', ('frcnn', f'fc{6 + j}')))
    names.update(bn_names(f'fast_rcnn_head/{_bn_scope(bn)}', ('frcnn', f'fc{6 + j}_bn', 'bn')))
    bn += 1
  names.update(_dense('fast_rcnn_head/class-predict', ('frcnn', 'class_predict')))
  names.update(_dense('fast_rcnn_head/box-predict', ('frcnn', 'box_predict')))
  return names


def mask_names(params: Mapping) -> dict[str, tuple[str, Path]]:
  head = params['mask']
  num_convs = _count(head, r'mask_conv_l\d+')
  names = {}
  for i in range(num_convs):
    names.update(_dense(f'mask_head/mask-conv-l{i}', ('mask', f'mask_conv_l{i}')))
    names.update(bn_names(f'mask_head/{_bn_scope(i)}', ('mask', f'mask_conv_l{i}_bn', 'bn')))
  names.update(_dense('mask_head/conv5-mask', ('mask', 'conv5_mask')))
  names.update(bn_names(f'mask_head/{_bn_scope(num_convs)}', ('mask', 'conv5_mask_bn', 'bn')))
  names.update(_dense('mask_head/mask_fcn_logits', ('mask', 'mask_fcn_logits')))
  return names


def maskrcnn_tf1_names(params: Mapping) -> dict[str, tuple[str, Path]]:
  """{TF1 variable name: (collection, path)} of the three heads (the backbone's are separate)."""
  return {**rpn_names(params), **fast_rcnn_names(params), **mask_names(params)}

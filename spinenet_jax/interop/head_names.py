"""Checkpoint names of the RetinaNet head: official TF1 and TF Model Garden.

TF1 (`heads.RetinanetHead`): `retinanet/{class_net,box_net}/{class,box}-{i}/{kernel,bias}` (shared
across levels), per-level norms `{class,box}-{i}-{level}/...`, predictions `{class,box}-predict`.
Separable convs store `depthwise_kernel`, `pointwise_kernel` and `bias`.

Model Garden (`dense_prediction_heads.RetinaNetHead`): `{prefix}/_{cls,box}_convs/{i}/...`,
`_{cls,box}_norms/{level - min_level}/{i}/...`, `_classifier/...` and `_box_regressor/...`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from spinenet_jax.interop.tf2_names import TF2_SUFFIX
from spinenet_jax.interop.tf_checkpoint import bn_names

Path = tuple[str, ...]
TOWERS = ('class', 'box')


def _conv_vars(tf_base: str, ours: Path, params: Mapping, suffix: str) -> dict:
  """A head conv: plain (kernel, bias) or separable (depthwise, pointwise kernels and bias)."""
  unit = params['head'][ours[-1]]
  if 'depthwise' in unit:
    return {f'{tf_base}/depthwise_kernel{suffix}': ('params', ours + ('depthwise', 'kernel')),
            f'{tf_base}/pointwise_kernel{suffix}': ('params', ours + ('pointwise', 'kernel')),
            f'{tf_base}/bias{suffix}': ('params', ours + ('pointwise', 'bias'))}
  return {f'{tf_base}/kernel{suffix}': ('params', ours + ('conv', 'kernel')),
          f'{tf_base}/bias{suffix}': ('params', ours + ('conv', 'bias'))}


def _tower_shape(params: Mapping, tower: str) -> tuple[int, list[int]]:
  head = params['head']
  num_convs = sum(1 for k in head if k.startswith(f'{tower}_conv_'))
  levels = sorted({int(k.rsplit('_', 1)[1]) for k in head if k.startswith(f'{tower}_norm_0_level_')})
  return num_convs, levels


def head_tf1_names(params: Mapping) -> dict[str, tuple[str, Path]]:
  names = {}
  for tower in TOWERS:
    scope = f'retinanet/{tower}_net/{tower}'
    num_convs, levels = _tower_shape(params, tower)
    for i in range(num_convs):
      names.update(_conv_vars(f'{scope}-{i}', ('head', f'{tower}_conv_{i}'), params, ''))
      for level in levels:
        names.update(bn_names(f'{scope}-{i}-{level}', ('head', f'{tower}_norm_{i}_level_{level}', 'bn')))
    names.update(_conv_vars(f'{scope}-predict', ('head', f'{tower}_predict'), params, ''))
  return names


def head_tf2_names(params: Mapping, prefix: str = 'head') -> dict[str, tuple[str, Path]]:
  names = {}
  for tower, tf_tower, predictor in (('class', 'cls', '_classifier'), ('box', 'box', '_box_regressor')):
    num_convs, levels = _tower_shape(params, tower)
    for i in range(num_convs):
      names.update(_conv_vars(f'{prefix}/_{tf_tower}_convs/{i}', ('head', f'{tower}_conv_{i}'),
                              params, TF2_SUFFIX))
      for j, level in enumerate(levels):
        names.update(bn_names(f'{prefix}/_{tf_tower}_norms/{j}/{i}',
                              ('head', f'{tower}_norm_{i}_level_{level}', 'bn'), TF2_SUFFIX))
    names.update(_conv_vars(f'{prefix}/{predictor}', ('head', f'{tower}_predict'), params,
                            TF2_SUFFIX))
  return names


def depthwise_transforms(names: Mapping[str, tuple[str, Path]]) -> dict:
  """TF stores depthwise kernels [kh, kw, C, 1]; a grouped Flax conv wants [kh, kw, 1, C]."""
  return {name: (lambda x: np.transpose(x, (0, 1, 3, 2)))
          for name in names if 'depthwise_kernel' in name}

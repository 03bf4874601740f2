"""Variable names of the official TF1 TPU graph for a SpineNet built here.

TF1 `tf.layers` names layers `conv2d`, `conv2d_1`, ... and `batch_normalization`, ... with a counter per
variable scope. Every SpineNet conv is followed by exactly one batch norm, so a conv and its norm share
the counter: the k-th ConvNorm unit of a scope owns `conv2d_k` and `batch_normalization_k`. Scopes:

  spinenet/                                                  stem, stem groups, then endpoints
  spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{p}/  reduce, [downsample], expand
  spinenet/sub_policy{i}/scale_permuted_block_{i+2}/           the block group of block i
"""

from __future__ import annotations

from typing import Iterator, Mapping

from spinenet_jax.interop.tf_checkpoint import bn_names

Path = tuple[str, ...]
_BLOCK_UNITS = ('projection', 'conv_0', 'conv_1', 'conv_2')
_RESAMPLE_UNITS = ('reduce', 'downsample', 'expand')


def _layer_name(base: str, k: int) -> str:
  return base if k == 0 else f'{base}_{k}'


def _unit_names(scope: str, k: int, unit: Path) -> Iterator[tuple[str, str, Path]]:
  yield f'{scope}/{_layer_name("conv2d", k)}/kernel', 'params', unit + ('conv', 'kernel')
  bn = bn_names(f'{scope}/{_layer_name("batch_normalization", k)}', unit + ('norm', 'bn'))
  for name, (collection, path) in bn.items():
    yield name, collection, path


def _group_units(group: Mapping, path: Path) -> Iterator[Path]:
  """ConvNorm units of a BlockGroup in TF creation order (projection first, then the main path)."""
  for r in range(len(group)):
    block = group[f'block_{r}']
    for unit in _BLOCK_UNITS:
      if unit in block:
        yield path + (f'block_{r}', unit)


def _scoped(scope: str, units: Iterator[Path]) -> Iterator[tuple[str, str, Path]]:
  for k, unit in enumerate(units):
    yield from _unit_names(scope, k, unit)


def spinenet_tf1_names(params: Mapping, scope: str = 'spinenet') -> dict[str, tuple[str, Path]]:
  """Maps each official TF1 variable name to (collection, flax path) for a SpineNet's `params` tree."""
  def top_units():
    yield ('stem',)
    g = 0
    while f'stem_group_{g}' in params:
      yield from _group_units(params[f'stem_group_{g}'], (f'stem_group_{g}',))
      g += 1
    for level in sorted(int(k.split('_')[1]) for k in params if k.startswith('endpoint_')):
      yield (f'endpoint_{level}',)

  names = dict((n, (c, p)) for n, c, p in _scoped(scope, top_units()))
  i = 0
  while f'block_{i}' in params:
    block = params[f'block_{i}']
    for p in (0, 1):
      resample = block[f'resample_{p}']
      units = ((f'block_{i}', f'resample_{p}', u) for u in _RESAMPLE_UNITS if u in resample)
      sub = f'{scope}/sub_policy{i}/resample_with_alpha_resample_{i}_{p}'
      names.update((n, (c, q)) for n, c, q in _scoped(sub, units))
    sub = f'{scope}/sub_policy{i}/scale_permuted_block_{i + 2}'
    names.update((n, (c, q)) for n, c, q in
                 _scoped(sub, _group_units(block['group'], (f'block_{i}', 'group'))))
    i += 1
  return names

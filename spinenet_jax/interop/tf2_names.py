"""Variable names of TF Model Garden (`official.vision`) SpineNet checkpoints.

Model Garden's SpineNet is a Keras functional model, so its checkpoint keys are positional:
`<prefix>/layer_with_weights-N/...`, where N counts the layers that own weights in the order of
`model.layers`. Keras orders a functional model's layers by their depth (the longest path, in layers,
to any model output; weightless layers such as activations, additions, pools and the reshape/tile ops
of nearest upsampling count too), deepest first, ties broken by the order a depth-first walk from the
outputs first reaches them. This module rebuilds that layer graph from the network plan and numbers
the weighted layers the same way, without TensorFlow.

Residual and bottleneck blocks are single Keras layers whose sub-layers are named `_shortcut`,
`_norm0` (projection) and `_conv1`, `_norm1`, `_conv2`, `_norm2`, `_conv3`, `_norm3`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from spinenet_jax.interop.tf_checkpoint import bn_names, get_path
from spinenet_jax.modeling import topology

Path = tuple[str, ...]
PREFIXES = ('backbone', 'model/_backbone')   # trainer checkpoints; tf.train.Checkpoint(model=...)
TF2_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'   # object-based checkpoint keys end with this
_BLOCK_SUBLAYERS = (('projection', '_shortcut', '_norm0'), ('conv_0', '_conv1', '_norm1'),
                    ('conv_1', '_conv2', '_norm2'), ('conv_2', '_conv3', '_norm3'))


@dataclasses.dataclass(eq=False)
class _Layer:
  inputs: tuple['_Layer', ...] = ()
  kind: str | None = None     # 'conv', 'norm' or 'block' for layers with weights
  unit: Path = ()             # flax path of the ConvNorm unit or block


def _op(*inputs: _Layer) -> _Layer:
  return _Layer(tuple(inputs))


class _GraphBuilder:
  """Mirrors the layer graph Model Garden's `SpineNet.__init__` builds."""

  def __init__(self, params: Mapping):
    self.params = params

  def conv_norm(self, x: _Layer, unit: Path, act: bool) -> _Layer:
    x = _Layer((x,), 'conv', unit)
    x = _Layer((x,), 'norm', unit)
    return _op(x) if act else x

  def block_group(self, x: _Layer, path: Path) -> _Layer:
    group = self.params
    for key in path:
      group = group[key]
    for r in range(len(group)):
      x = _Layer((x,), 'block', path + (f'block_{r}',))
    return _op(x)   # tf.identity

  def upsample(self, y: _Layer) -> _Layer:
    # spatial_transform_ops.nearest_upsampling: shape -> getitem h, w -> reshape -> tile ->
    # multiply h, w -> reshape.
    shape = _op(y)
    h, w = _op(shape), _op(shape)
    tiled = _op(_op(y, h, w))
    return _op(tiled, _op(h), _op(w))

  def resample(self, x: _Layer, plan: topology.ResamplePlan, target_width: int, unit: Path) -> _Layer:
    y = self.conv_norm(x, unit + ('reduce',), act=True)
    width = plan.in_shape[1]
    if width > target_width:
      y = self.conv_norm(y, unit + ('downsample',), act=True)
      for _ in topology.downsample_pools(width, target_width, 'model_garden'):
        y = _op(y)
    elif width < target_width:
      y = self.upsample(y)
    return self.conv_norm(y, unit + ('expand',), act=False)

  def build(self, plan: topology.NetworkPlan, min_level: int, max_level: int) -> list[_Layer]:
    x = self.conv_norm(_Layer(), ('stem',), act=True)
    x = _op(x)   # max pool
    feats = []
    for g in range(len([k for k in self.params if k.startswith('stem_group_')])):
      x = self.block_group(x, (f'stem_group_{g}',))
      feats.append(x)
    outputs = {}
    for b in plan.blocks:
      parents = [self.resample(feats[p.parent], p, b.target_width, (f'block_{b.index}',
                                                                     f'resample_{i}'))
                 for i, p in enumerate(b.parents)]
      merged = _op(*parents, *(feats[j] for j in b.merged_features))   # add_n
      y = self.block_group(_op(merged), (f'block_{b.index}', 'group'))
      feats.append(y)
      if b.spec.is_output:
        outputs[b.spec.level] = y
    # The endpoints dict is flattened in sorted (string) key order.
    return [self.conv_norm(outputs[level], (f'endpoint_{level}',), act=True)
            for level in sorted(range(min_level, max_level + 1), key=str)]


def keras_layer_order(outputs: Iterable[_Layer]) -> list[_Layer]:
  """Layers in Keras functional order: depth to the outputs descending, then first-visit order."""
  first_visit: dict[int, int] = {}
  post_order: list[_Layer] = []
  for out in outputs:
    if id(out) in first_visit:   # already reached from an earlier output
      continue
    first_visit[id(out)] = len(first_visit)
    stack = [(out, iter(out.inputs))]
    while stack:
      layer, parents = stack[-1]
      parent = next(parents, None)
      if parent is None:
        stack.pop()
        post_order.append(layer)   # a layer is pushed once, on its first visit
      elif id(parent) not in first_visit:
        first_visit[id(parent)] = len(first_visit)
        stack.append((parent, iter(parent.inputs)))
  depth: dict[int, int] = {}
  for layer in reversed(post_order):   # every consumer comes before its inputs
    d = depth.setdefault(id(layer), 0)
    for parent in layer.inputs:
      depth[id(parent)] = max(depth.get(id(parent), 0), d + 1)
  return sorted(post_order, key=lambda layer: (-depth[id(layer)], first_visit[id(layer)]))


def spinenet_tf2_names(params: Mapping, config, prefix: str = 'backbone') -> dict[str, tuple[str, Path]]:
  """Maps Model Garden checkpoint keys to (collection, flax path) for a SpineNet `params` tree."""
  plan = config.plan((640, 640))
  outputs = _GraphBuilder(params).build(plan, config.min_level, config.max_level)
  weighted = [layer for layer in keras_layer_order(outputs) if layer.kind]
  names = {}
  for n, layer in enumerate(weighted):
    base = f'{prefix}/layer_with_weights-{n}'
    if layer.kind == 'conv':
      names[f'{base}/kernel{TF2_SUFFIX}'] = ('params', layer.unit + ('conv', 'kernel'))
    elif layer.kind == 'norm':
      names.update(bn_names(base, layer.unit + ('norm', 'bn'), TF2_SUFFIX))
    else:
      block = get_path(params, layer.unit)
      for ours, conv, norm in _BLOCK_SUBLAYERS:
        if ours not in block:
          continue
        names[f'{base}/{conv}/kernel{TF2_SUFFIX}'] = ('params', layer.unit + (ours, 'conv', 'kernel'))
        names.update(bn_names(f'{base}/{norm}', layer.unit + (ours, 'norm', 'bn'), TF2_SUFFIX))
  return names


def detect_prefix(names: Iterable[str]) -> str:
  """The scope of the backbone in a Model Garden checkpoint (trainer or model-only layout)."""
  names = list(names)
  for prefix in PREFIXES:
    if any(n.startswith(prefix + '/layer_with_weights-') for n in names):
      return prefix
  raise ValueError('no Model Garden SpineNet backbone in this checkpoint: expected keys like '
                   f'{PREFIXES[0]}/layer_with_weights-0/kernel{TF2_SUFFIX} or the same under '
                   f'{PREFIXES[1]}/.')


def is_backbone_name(name: str) -> bool:
  return any(name.startswith(prefix + '/') for prefix in PREFIXES)

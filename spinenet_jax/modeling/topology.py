"""The static shape plan of a SpineNet: what each resampling does, at a given input size.

Everything here is plain Python arithmetic on shapes, shared by the Flax module (which builds exactly
these operations), the summary tools and the block-spec notebook. It follows the official
`resample_with_alpha` and `_build_scale_permuted_network`: only the image *width* drives the target
sizes (heights follow the aspect ratio), channel counts truncate with `int`, and the output-merge rule
adds raw, unused features of equal width and channels to output blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from spinenet_jax.modeling import block_specs as bs


@dataclasses.dataclass(frozen=True)
class ResamplePlan:
  """How one parent feature is brought to its target block (official `resample_with_alpha`)."""
  parent: int                    # index of the parent feature
  in_shape: tuple[int, int, int]  # (height, width, channels) of the parent
  reduced_filters: int           # 1x1 conv to int(C / (4 if bottleneck) * alpha)
  downsample_conv: bool          # 3x3 stride-2 conv (when the parent is wider than the target)
  max_pools: tuple[tuple[int, int], ...]  # (pool size, stride) each, SAME padding
  upsample_scale: int | None     # integer nearest-neighbour repeat
  resize_to: tuple[int, int] | None  # legacy TF1 nearest resize to (height, width)
  out_filters: int               # final 1x1 conv (BN, no activation)
  out_shape: tuple[int, int, int]

  @property
  def kind(self) -> str:
    """A short label: 'same', 'conv3x3s2', 'conv3x3s2+maxpool3s2', 'up2', 'resize', ..."""
    parts = []
    if self.downsample_conv:
      parts.append('conv3x3s2')
    parts.extend(f'maxpool{size}s{stride}' for size, stride in self.max_pools)
    if self.upsample_scale:
      parts.append(f'up{self.upsample_scale}')
    if self.resize_to:
      parts.append(f'resize{self.resize_to[0]}x{self.resize_to[1]}')
    return '+'.join(parts) or 'same'


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  index: int                     # position in the block specs
  feature_index: int             # index of its output among all features (index + 2)
  spec: bs.BlockSpec
  target_width: int
  filters: int                   # block group filters (a bottleneck outputs 4x)
  parents: tuple[ResamplePlan, ResamplePlan]
  merged_features: tuple[int, ...]  # raw features added by the output-merge rule
  out_shape: tuple[int, int, int]
  drop_connect_rate: float | None


@dataclasses.dataclass(frozen=True)
class NetworkPlan:
  input_shape: tuple[int, int]
  stem_shape: tuple[int, int, int]   # each of the two stem features
  blocks: tuple[BlockPlan, ...]
  feature_shapes: tuple[tuple[int, int, int], ...]
  output_blocks: dict                # level -> block index
  unused_features: tuple[int, ...]   # out-degree 0 at the end (used only as outputs)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def stride2_size(n: int) -> int:
  """Output size of a stride-2 conv or SAME pool of any odd kernel: ceil(n / 2) in both padding modes."""
  return _ceil_div(n, 2)


RESAMPLE_POOLINGS = ('official', 'model_garden')


def downsample_pools(width: int, target_width: int, mode: str) -> list[tuple[int, int]]:
  """Max pools after the stride-2 conv.

  official (TPU code): one pool when the ratio exceeds 2: size 3 if ratio <= 4 else 5, stride
    ratio // 2 (2 when the widths do not divide).
  model_garden (TF Model Garden): 3x3/s2 pools while the nominal width, halved in floats, is still
    above the target. The two agree except at ratio 8 (one 5x5/s4 vs two 3x3/s2).
  """
  if mode == 'official':
    if width // target_width <= 2:
      return []
    stride = 2 if width % target_width != 0 else width // target_width // 2
    return [(3 if width / target_width <= 4 else 5, stride)]
  if mode == 'model_garden':
    pools, nominal = [], width / 2
    while nominal > target_width:
      pools.append((3, 2))
      nominal /= 2
    return pools
  raise ValueError(f'resample_pooling must be one of {RESAMPLE_POOLINGS}, got {mode!r}.')


def plan_resample(parent: int, in_shape: tuple[int, int, int], parent_block_fn: str,
                  target_width: int, target_filters: int, target_block_fn: str, alpha: float,
                  use_native_resize_op: bool = False,
                  resample_pooling: str = 'official') -> ResamplePlan:
  height, width, channels = in_shape
  num_filters = channels / 4 if parent_block_fn == 'bottleneck' else channels  # float, as official
  reduced = int(num_filters * alpha)
  down_conv, pools, up_scale, resize_to = False, [], None, None
  h, w = height, width
  if width > target_width:
    down_conv = True
    h, w = stride2_size(h), stride2_size(w)
    pools = downsample_pools(width, target_width, resample_pooling)
    for _, stride in pools:
      h, w = _ceil_div(h, stride), _ceil_div(w, stride)
    if w != target_width:
      resize_to = (int(target_width / width * height), target_width)
  elif width < target_width:
    if target_width % width != 0 or use_native_resize_op:
      resize_to = (int(target_width / width * height), target_width)
    else:
      up_scale = target_width // width
      h, w = h * up_scale, w * up_scale
  if resize_to:
    h, w = resize_to
  out_filters = bs.block_output_channels(target_block_fn, target_filters)
  return ResamplePlan(parent, in_shape, reduced, down_conv, tuple(pools), up_scale, resize_to,
                      out_filters, (h, w, out_filters))


def drop_connect_rate(init_rate: float | None, index: int, num_blocks: int) -> float | None:
  """Official per-block stochastic-depth rate: init * (i + 1) / n, only for 0 < init < 1."""
  if init_rate is not None and 0 < init_rate < 1:
    return init_rate * float(index + 1) / num_blocks
  return None


def plan_network(specs: Sequence[bs.BlockSpec], input_shape: tuple[int, int], filter_size_scale: float,
                 resample_alpha: float, min_level: int = 3, max_level: int = 7,
                 use_native_resize_op: bool = False,
                 init_drop_connect_rate: float | None = None,
                 resample_pooling: str = 'official') -> NetworkPlan:
  """Plans every resampling of the scale-permuted network for an (height, width) input."""
  bs.validate_block_specs(specs, min_level, max_level)
  height, width = input_shape
  if height < 1 or width < 1:
    raise ValueError(f'input_shape must be positive, got {input_shape}.')
  # 7x7/s2 conv, then 3x3/s2 max pool.
  stem_hw = (stride2_size(stride2_size(height)), stride2_size(stride2_size(width)))
  stem_channels = bs.block_output_channels(
      bs.STEM_BLOCK_FN, bs.block_filters(2, filter_size_scale))
  stem_shape = (*stem_hw, stem_channels)
  shapes = [stem_shape] * bs.NUM_STEM_FEATURES
  block_fns = [bs.STEM_BLOCK_FN] * bs.NUM_STEM_FEATURES
  out_degree = [0] * bs.NUM_STEM_FEATURES
  blocks, outputs = [], {}
  for i, spec in enumerate(specs):
    target_width = _ceil_div(width, 2**spec.level)
    filters = bs.block_filters(spec.level, filter_size_scale)
    parents = []
    for p in spec.input_offsets:
      parents.append(plan_resample(p, shapes[p], block_fns[p], target_width, filters, spec.block_fn,
                                   resample_alpha, use_native_resize_op, resample_pooling))
      out_degree[p] += 1
    if parents[0].out_shape != parents[1].out_shape:
      raise bs.BlockSpecError(
          f'block {i} {spec}: its parents resample to different shapes {parents[0].out_shape} and '
          f'{parents[1].out_shape}; this input size {input_shape} cannot build this network.')
    out_shape = parents[0].out_shape
    merged = []
    if spec.is_output:
      for j, shape in enumerate(shapes):
        if out_degree[j] == 0 and shape[1] == target_width and shape[2] == out_shape[2]:
          if shape[0] != out_shape[0]:
            raise bs.BlockSpecError(f'block {i}: merged feature {j} has shape {shape}, '
                                    f'target {out_shape}.')
          merged.append(j)
          out_degree[j] += 1
      outputs[spec.level] = i
    rate = drop_connect_rate(init_drop_connect_rate, i, len(specs))
    blocks.append(BlockPlan(i, len(shapes), spec, target_width, filters, tuple(parents),
                            tuple(merged), out_shape, rate))
    shapes.append(out_shape)
    block_fns.append(spec.block_fn)
    out_degree.append(0)
  unused = tuple(j for j, d in enumerate(out_degree) if d == 0)
  return NetworkPlan((height, width), stem_shape, tuple(blocks), tuple(shapes), outputs, unused)


def endpoint_shapes(plan: NetworkPlan, min_level: int, max_level: int,
                    endpoints_num_filters: int) -> dict[int, tuple[int, int, int]]:
  return {level: (*plan.blocks[plan.output_blocks[level]].out_shape[:2], endpoints_num_filters)
          for level in range(min_level, max_level + 1)}


def describe(plan: NetworkPlan) -> str:
  """One line per block, in the format of the official resampling table."""
  lines = []
  for b in plan.blocks:
    parents = '; '.join(f'in{p.parent}:{p.kind}' for p in b.parents)
    merged = f'; +identity-add feats {list(b.merged_features)}' if b.merged_features else ''
    lines.append(f'block{b.index} (feat idx {b.feature_index}) L{b.spec.level} {b.spec.block_fn} '
                 f'out={b.spec.is_output} ch={b.out_shape[2]} w={b.out_shape[1]}: {parents}{merged}')
  return '\n'.join(lines)


"""SpineNet and RetinaNet in plain PyTorch, for inference with spinenet-jax checkpoints.

Self-contained (torch; safetensors for `load`; no jax): copy this file into your own code.

    model = load('spinenet49.safetensors')   # from tools/convert_to_pytorch.py; in eval mode
    out = model(images)                      # float [B, 3, H, W]
    out['cls_outputs'][3]   # [B, A * C, ceil(H/8), ceil(W/8)]: channel anchor * C + class
    out['box_outputs'][3]   # [B, A * 4, ceil(H/8), ceil(W/8)]: channel anchor * 4 + coordinate

A backbone-only export returns {level: [B, endpoints_num_filters, ceil(H/2^l), ceil(W/2^l)]}.
Tensors are NCHW, kernels OIHW; channels are ordered as the last axis of the JAX (NHWC) outputs.
Parameter names are the JAX variable paths joined with '.' (kernel and scale -> weight, mean and
var -> running_mean and running_var). `build_model(config)` takes the "model" dict of model.json.
'fixed' conv padding pads stride-2 convs by (k-1)//2 before and the rest after at any input size
(official TPU code); 'same' is TF SAME. Drop-connect and DropBlock act only in training: not built.
Mask R-CNN exports need tools/pytorch_maskrcnn.py next to this file (`build_model` and `load`
import it for them).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = 'spinenet-pytorch/1'
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}
STEM_CONV_FILTERS = 64
# (level, block_fn, (parent0, parent1), is_output); features 0 and 1 are the stem, block i is i + 2.
OFFICIAL_BLOCK_SPECS = (
    (2, 'bottleneck', (0, 1), False), (4, 'residual', (0, 1), False),
    (3, 'bottleneck', (2, 3), False), (4, 'bottleneck', (2, 4), False),
    (6, 'residual', (3, 5), False), (4, 'bottleneck', (3, 5), False),
    (5, 'residual', (6, 7), False), (7, 'residual', (6, 8), False),
    (5, 'bottleneck', (8, 9), False), (5, 'bottleneck', (8, 10), False),
    (4, 'bottleneck', (5, 10), True), (3, 'bottleneck', (4, 10), True),
    (5, 'bottleneck', (7, 12), True), (7, 'bottleneck', (5, 14), True),
    (6, 'bottleneck', (12, 14), True))


# Configuration: the dicts of spinenet-jax `to_dict`, parsed without it.


@dataclasses.dataclass(frozen=True)
class NormSettings:
  type: str = 'batch'        # 'batch', 'group' or 'evonorm_s0'
  momentum: float = 0.997    # JAX convention (weight of the old statistics); torch's is 1 - this
  epsilon: float = 1e-4
  groups: int = 32


@dataclasses.dataclass(frozen=True)
class BackboneSettings:
  block_specs: tuple = OFFICIAL_BLOCK_SPECS
  min_level: int = 3
  max_level: int = 7
  endpoints_num_filters: int = 256
  filter_size_scale: float = 1.0
  resample_alpha: float = 0.5
  block_repeats: int = 1
  activation: str = 'swish'
  conv_padding: str = 'fixed'
  resample_pooling: str = 'official'
  use_native_resize_op: bool = False
  norm: NormSettings = NormSettings()
  # Training-only (identity at inference); kept so that a config round-trips.
  init_drop_connect_rate: float | None = None
  dropblock_keep_prob: float | None = None
  dropblock_size: int | None = None


@dataclasses.dataclass(frozen=True)
class HeadSettings:
  num_convs: int = 4
  num_filters: int = 256
  num_classes: int = 91
  separable_conv: bool = False
  norm: NormSettings | None = None     # None: the backbone's


def _settings(cls, d: dict | None, where: str, **parsed):
  d = dict(d or {})
  unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise ValueError(f'unknown {where} settings {sorted(unknown)}: this file is older than the '
                     'checkpoint; update it.')
  # None means "the default", as in the JAX from_dict (except the training-only fields).
  kept = {k: v for k, v in d.items() if v is not None or k.startswith(('init_', 'dropblock'))}
  return cls(**{**kept, **parsed})


def _norm(d: dict | None) -> NormSettings:
  norm = _settings(NormSettings, d, 'norm')
  if norm.type not in ('batch', 'group', 'evonorm_s0'):
    raise ValueError(f'unknown norm type {norm.type!r}')
  return norm


def backbone_settings(d: dict) -> BackboneSettings:
  specs = tuple((int(s[0]), str(s[1]), (int(s[2][0]), int(s[2][1])), bool(s[3]))
                for s in (d.get('block_specs') or OFFICIAL_BLOCK_SPECS))
  b = _settings(BackboneSettings, d, 'backbone', block_specs=specs, norm=_norm(d.get('norm')))
  checks = {'activation': ('relu', 'swish'), 'conv_padding': ('fixed', 'same'),
            'resample_pooling': ('official', 'model_garden')}
  for key, allowed in checks.items():
    if getattr(b, key) not in allowed:
      raise ValueError(f'{key} must be one of {allowed}, got {getattr(b, key)!r}')
  if any(fn not in ('bottleneck', 'residual') for _, fn, _, _ in specs):
    raise ValueError(f'block_fn must be "bottleneck" or "residual": {specs}')
  outputs = {level for level, _, _, is_output in specs if is_output}
  missing = [lv for lv in range(b.min_level, b.max_level + 1) if lv not in outputs]
  if missing:
    raise ValueError(f'block_specs have no output block for level(s) {missing}')
  return b


def parse_config(config: dict) -> tuple[BackboneSettings, HeadSettings | None, int]:
  """(backbone, head or None, anchors per location) from a model dict or a whole model.json."""
  config = config.get('model', config)
  kind = config.get('type')
  if kind not in ('spinenet', 'retinanet'):
    raise ValueError(f'model type must be "spinenet" or "retinanet" ("maskrcnn": '
                     f'pytorch_maskrcnn.parse_config), got {kind!r}')
  backbone = backbone_settings(config['backbone'])
  if kind == 'spinenet':
    return backbone, None, 0
  head_dict = dict(config['head'])
  head = _settings(HeadSettings, head_dict, 'head',
                   norm=_norm(head_dict['norm']) if head_dict.get('norm') else None)
  anchors = config.get('anchors', {})
  per_location = anchors.get('num_scales', 3) * len(anchors.get('aspect_ratios', (1.0, 2.0, 0.5)))
  return backbone, head, per_location


# Layers.


def _activate(x: torch.Tensor, name: str | None) -> torch.Tensor:
  if name is None:
    return x
  return F.relu(x) if name == 'relu' else F.silu(x)   # swish = x * sigmoid(x)


def _tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def max_pool_same(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
  """TF SAME max pool: -inf padding, the extra pad at the end."""
  (top, bottom), (left, right) = (_tf_same_pads(n, size, stride) for n in x.shape[-2:])
  return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), size, stride)


def legacy_nearest_indices(in_size: int, out_size: int) -> torch.Tensor:
  """Source indices of TF1 resize_nearest_neighbor: floor(dst * (in / out)) in float32 arithmetic
  (exact rational arithmetic picks different pixels at some sizes), clamped to in - 1."""
  scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
  src = torch.floor(torch.arange(out_size, dtype=torch.float32) * scale).long()
  return src.clamp(max=in_size - 1)


def legacy_nearest_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
  rows = legacy_nearest_indices(x.shape[-2], size[0]).to(x.device)
  cols = legacy_nearest_indices(x.shape[-1], size[1]).to(x.device)
  return x.index_select(-2, rows).index_select(-1, cols)


def num_groups(channels: int, groups: int) -> int:
  """`groups`, or the largest divisor of `channels` below it (49S has 41- and 83-channel layers)."""
  return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


class EvoNormS0(nn.Module):
  """x * sigmoid(v x) / group_std(x) * weight + bias (no sigmoid term without an activation)."""

  def __init__(self, channels: int, groups: int, epsilon: float, nonlinearity: bool):
    super().__init__()
    self.groups, self.epsilon = num_groups(channels, groups), epsilon
    if nonlinearity:
      self.v = nn.Parameter(torch.ones(channels))
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    g = self.groups
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x   # as JAX: >= float32
    xg = xf.reshape(b, g, c // g, h, w)
    std = torch.sqrt(xg.var(dim=(2, 3, 4), unbiased=False, keepdim=True) + self.epsilon)
    if hasattr(self, 'v'):
      xg = xg * torch.sigmoid(self.v.reshape(1, g, c // g, 1, 1) * xg)
    y = (xg / std).reshape(b, c, h, w)
    return (y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)).to(x.dtype)


class Norm(nn.Module):
  """Batch norm, GroupNorm or EvoNorm-S0, then the activation (EvoNorm has its own)."""

  def __init__(self, channels: int, config: NormSettings, activation: str | None):
    super().__init__()
    self.activation = activation
    self.kind = {'batch': 'bn', 'group': 'gn', 'evonorm_s0': 'evonorm'}[config.type]
    if config.type == 'batch':
      self.bn = nn.BatchNorm2d(channels, eps=config.epsilon, momentum=1 - config.momentum)
    elif config.type == 'group':
      self.gn = nn.GroupNorm(num_groups(channels, config.groups), channels, eps=config.epsilon)
    else:
      self.evonorm = EvoNormS0(channels, config.groups, config.epsilon, activation is not None)
      self.activation = None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return _activate(getattr(self, self.kind)(x), self.activation)


class ConvNorm(nn.Module):
  """Conv (no bias) -> norm -> optional activation, padded as the JAX `ConvNorm`."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int, activation: str | None,
               padding_mode: str, norm: NormSettings):
    super().__init__()
    self.kernel, self.stride, self.padding_mode = kernel, stride, padding_mode
    # Stride 1 (odd kernels) is symmetric in both modes: let the conv pad, saving a copy.
    self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0,
                          bias=False)
    self.norm = Norm(cout, norm, activation)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.stride > 1:
      k, s = self.kernel, self.stride
      if self.padding_mode == 'fixed':
        pads = [((k - 1) // 2, k - 1 - (k - 1) // 2)] * 2
      else:
        pads = [_tf_same_pads(n, k, s) for n in x.shape[-2:]]
      x = F.pad(x, (*pads[1], *pads[0]))
    return self.norm(self.conv(x))


class Block(nn.Module):
  """Residual (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 to 4x) block with a (projected) shortcut."""

  def __init__(self, block_fn: str, cin: int, filters: int, use_projection: bool,
               b: BackboneSettings):
    super().__init__()
    self.activation = b.activation
    expansion, path = ((4, ((1, 1, True), (3, 1, True), (1, 4, False))) if block_fn == 'bottleneck'
                       else (1, ((3, 1, True), (3, 1, False))))
    if use_projection:
      self.projection = ConvNorm(cin, expansion * filters, 1, 1, None, b.conv_padding, b.norm)
    self.convs = []
    for i, (kernel, mult, act) in enumerate(path):
      conv = ConvNorm(cin, mult * filters, kernel, 1, b.activation if act else None,
                      b.conv_padding, b.norm)
      self.add_module(f'conv_{i}', conv)
      self.convs.append(f'conv_{i}')
      cin = mult * filters

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = self.projection(x) if hasattr(self, 'projection') else x
    for name in self.convs:
      x = getattr(self, name)(x)
    return _activate(x + shortcut, self.activation)


def _output_channels(block_fn: str, filters: int) -> int:
  return 4 * filters if block_fn == 'bottleneck' else filters


class BlockGroup(nn.Sequential):
  """`block_repeats` blocks named block_0, block_1, ...; only the first may project."""

  def __init__(self, block_fn: str, cin: int, filters: int, b: BackboneSettings):
    super().__init__()
    projection = cin != _output_channels(block_fn, filters)
    for r in range(b.block_repeats):
      self.add_module(f'block_{r}', Block(block_fn, cin, filters, projection and r == 0, b))
      cin = _output_channels(block_fn, filters)


def downsample_pools(width: int, target_width: int, mode: str) -> list[tuple[int, int]]:
  """(size, stride) of the max pools after the stride-2 conv. 'official': one pool once the ratio
  exceeds 2 (3x3 up to 4, else 5x5; stride ratio // 2, or 2 when the widths do not divide);
  'model_garden': 3x3/s2 pools while the width, halved in floats, is still above the target."""
  if mode == 'official':
    if width // target_width <= 2:
      return []
    stride = 2 if width % target_width != 0 else width // target_width // 2
    return [(3 if width / target_width <= 4 else 5, stride)]
  pools, nominal = [], width / 2
  while nominal > target_width:
    pools.append((3, 2))
    nominal /= 2
  return pools


class Resample(nn.Module):
  """1x1 reduce, [3x3/s2 conv, max pools | nearest upsampling | legacy resize], 1x1 expand."""

  def __init__(self, cin: int, parent_fn: str, downsample: bool, cout: int, b: BackboneSettings):
    super().__init__()
    self.b = b
    reduced = int((cin / 4 if parent_fn == 'bottleneck' else cin) * b.resample_alpha)
    self.reduce = ConvNorm(cin, reduced, 1, 1, b.activation, b.conv_padding, b.norm)
    if downsample:
      self.downsample = ConvNorm(reduced, reduced, 3, 2, b.activation, b.conv_padding, b.norm)
    self.expand = ConvNorm(reduced, cout, 1, 1, None, b.conv_padding, b.norm)

  def forward(self, x: torch.Tensor, target_width: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    resize_to = (int(target_width / width * height), target_width)
    x = self.reduce(x)
    if width > target_width:
      x = self.downsample(x)
      for size, stride in downsample_pools(width, target_width, self.b.resample_pooling):
        x = max_pool_same(x, size, stride)
      if x.shape[-1] != target_width:
        x = legacy_nearest_resize(x, resize_to)
    elif width < target_width:
      if target_width % width != 0 or self.b.use_native_resize_op:
        x = legacy_nearest_resize(x, resize_to)
      else:
        scale = target_width // width
        x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return self.expand(x)


class ScalePermutedBlock(nn.Module):
  """Two resamplings and a block group; `SpineNet.forward` wires them (it knows the features)."""

  def __init__(self, parents: list[tuple[int, str, bool]], block_fn: str, filters: int,
               b: BackboneSettings):
    """`parents`: (channels, block_fn, gets the 3x3/s2 conv) of each parent feature."""
    super().__init__()
    cout = _output_channels(block_fn, filters)
    for p, (cin, parent_fn, downsample) in enumerate(parents):
      self.add_module(f'resample_{p}', Resample(cin, parent_fn, downsample, cout, b))
    self.group = BlockGroup(block_fn, cout, filters, b)


class SpineNet(nn.Module):
  """images [B, 3, H, W] -> {level: [B, endpoints_num_filters, ceil(H/2^l), ceil(W/2^l)]}."""

  def __init__(self, settings: BackboneSettings):
    super().__init__()
    b = self.settings = settings
    self.stem = ConvNorm(3, STEM_CONV_FILTERS, 7, 2, b.activation, b.conv_padding, b.norm)
    stem_filters = int(FILTER_SIZE_MAP[2] * b.filter_size_scale)
    cin = STEM_CONV_FILTERS
    for g in range(2):
      self.add_module(f'stem_group_{g}', BlockGroup('bottleneck', cin, stem_filters, b))
      cin = _output_channels('bottleneck', stem_filters)
    # (channels, block_fn, level) of every feature: the two stem outputs, then each block's.
    feats = [(cin, 'bottleneck', 2)] * 2
    for i, (level, block_fn, offsets, _) in enumerate(b.block_specs):
      filters = int(FILTER_SIZE_MAP[level] * b.filter_size_scale)
      # A parent at a finer level is wider: it gets the 3x3/s2 conv (the JAX plan at any input
      # big enough for distinct level widths).
      parents = [(feats[o][0], feats[o][1], feats[o][2] < level) for o in offsets]
      self.add_module(f'block_{i}', ScalePermutedBlock(parents, block_fn, filters, b))
      feats.append((_output_channels(block_fn, filters), block_fn, level))
    self.output_blocks = {spec[0]: i for i, spec in enumerate(b.block_specs) if spec[3]}
    for level in range(b.min_level, b.max_level + 1):
      cin = feats[self.output_blocks[level] + 2][0]
      self.add_module(f'endpoint_{level}', ConvNorm(cin, b.endpoints_num_filters, 1, 1,
                                                    b.activation, b.conv_padding, b.norm))

  def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
    b = self.settings
    if images.ndim != 4 or images.shape[1] != 3:
      raise ValueError(f'SpineNet expects NCHW images with 3 channels, got {tuple(images.shape)}')
    width = images.shape[-1]
    x = max_pool_same(self.stem(images), 3, 2)
    feats = []
    for g in range(2):
      x = getattr(self, f'stem_group_{g}')(x)
      feats.append(x)
    out_degree = [0, 0]
    outputs = {}
    for i, (level, _, offsets, is_output) in enumerate(b.block_specs):
      block = getattr(self, f'block_{i}')
      target_width = -(-width // 2**level)   # only the width drives the target (official)
      parts = [getattr(block, f'resample_{p}')(feats[o], target_width)
               for p, o in enumerate(offsets)]
      if parts[0].shape != parts[1].shape:
        raise ValueError(f'block {i}: parents resample to {tuple(parts[0].shape)} and '
                         f'{tuple(parts[1].shape)}; input {tuple(images.shape)} is too small.')
      for o in offsets:
        out_degree[o] += 1
      target = parts[0] + parts[1]
      if is_output:   # raw, unused features of the target's width and channels join outputs
        for j, f in enumerate(feats):
          if out_degree[j] == 0 and f.shape[-1] == target_width and f.shape[1] == target.shape[1]:
            if f.shape != target.shape:
              raise ValueError(f'block {i}: merged feature {j} has shape {tuple(f.shape)}')
            target = target + f
            out_degree[j] += 1
      y = block.group(_activate(target, b.activation))
      feats.append(y)
      out_degree.append(0)
      if is_output:
        outputs[level] = y
    return {level: getattr(self, f'endpoint_{level}')(outputs[level])
            for level in range(b.min_level, b.max_level + 1)}


# The RetinaNet head.


class HeadConv(nn.Module):
  """3x3 SAME conv with bias, or separable: depthwise 3x3 (no bias), then pointwise 1x1."""

  def __init__(self, cin: int, cout: int, separable: bool):
    super().__init__()
    if separable:
      self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
      self.pointwise = nn.Conv2d(cin, cout, 1)
    else:
      self.conv = nn.Conv2d(cin, cout, 3, padding=1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if hasattr(self, 'conv'):
      return self.conv(x)
    return self.pointwise(self.depthwise(x))


class RetinaNetHead(nn.Module):
  """Class and box towers: convs shared across levels, a norm per level and conv."""

  def __init__(self, h: HeadSettings, b: BackboneSettings, anchors_per_location: int):
    super().__init__()
    self.h, self.levels = h, range(b.min_level, b.max_level + 1)
    norm = h.norm or b.norm
    for tower, outputs in (('class', h.num_classes * anchors_per_location),
                           ('box', 4 * anchors_per_location)):
      cin = b.endpoints_num_filters
      for i in range(h.num_convs):
        self.add_module(f'{tower}_conv_{i}', HeadConv(cin, h.num_filters, h.separable_conv))
        for level in self.levels:
          self.add_module(f'{tower}_norm_{i}_level_{level}',
                          Norm(h.num_filters, norm, b.activation))
        cin = h.num_filters
      self.add_module(f'{tower}_predict', HeadConv(cin, outputs, h.separable_conv))

  def _tower(self, tower: str, features: dict) -> dict[int, torch.Tensor]:
    result = {}
    for level in self.levels:
      x = features[level]
      for i in range(self.h.num_convs):
        x = getattr(self, f'{tower}_norm_{i}_level_{level}')(getattr(self, f'{tower}_conv_{i}')(x))
      result[level] = getattr(self, f'{tower}_predict')(x)
    return result

  def forward(self, features: dict) -> tuple[dict, dict]:
    return self._tower('class', features), self._tower('box', features)


class RetinaNet(nn.Module):
  """images [B, 3, H, W] -> {'cls_outputs': {level: ...}, 'box_outputs': {level: ...}} (NCHW)."""

  def __init__(self, backbone: BackboneSettings, head: HeadSettings, anchors_per_location: int):
    super().__init__()
    self.backbone = SpineNet(backbone)
    self.head = RetinaNetHead(head, backbone, anchors_per_location)

  def forward(self, images: torch.Tensor) -> dict[str, dict[int, torch.Tensor]]:
    cls, box = self.head(self.backbone(images))
    return {'cls_outputs': cls, 'box_outputs': box}


# Building and loading.


def _maskrcnn_module():
  """pytorch_maskrcnn.py, the sibling of this file (in the same package, or on sys.path)."""
  name = f'{__package__}.pytorch_maskrcnn' if __package__ else 'pytorch_maskrcnn'
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name != name:
      raise
    raise ValueError('a Mask R-CNN model needs pytorch_maskrcnn.py (tools/ of spinenet-jax) next '
                     'to pytorch_spinenet.py') from None


def build_model(config: dict) -> nn.Module:
  """The (untrained) module of a model.json dict (SpineNet, RetinaNet or, through
  pytorch_maskrcnn.py, MaskRCNN); its `config` attribute keeps the dict."""
  if config.get('model', config).get('type') == 'maskrcnn':
    return _maskrcnn_module().build_maskrcnn(config)
  backbone, head, anchors_per_location = parse_config(config)
  model = SpineNet(backbone) if head is None else RetinaNet(backbone, head, anchors_per_location)
  model.config = config.get('model', config)
  return model


def read_metadata(path: str) -> dict[str, Any]:
  """The metadata of an exported file: {'config': model dict, 'info': dict, 'format': str}."""
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(path, framework='pt') as f:
      meta = f.metadata() or {}
  except SafetensorError as e:
    raise ValueError(f'{path} is not a safetensors file ({e}); only safetensors files written by '
                     'tools/convert_to_pytorch.py load (nothing is unpickled).') from None
  if meta.get('format') != FORMAT or 'config' not in meta:
    raise ValueError(f'{path} has no {FORMAT} metadata: not written by convert_to_pytorch.py.')
  return {'format': meta['format'], 'config': json.loads(meta['config']),
          'info': json.loads(meta.get('info', '{}'))}


def load(path: str, device: str | torch.device = 'cpu') -> nn.Module:
  """Rebuilds the exported model of `path` with its weights, in eval mode."""
  from safetensors.torch import load_file
  config = read_metadata(path)['config']
  model = build_model(config)
  state = load_file(path, device=str(device))
  dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
  if len(dtypes) == 1:   # keep the file's precision (e.g. float64 exports)
    model = model.to(dtype=dtypes.pop())
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith('num_batches_tracked')]
  if missing or unexpected:
    raise ValueError(f'{path} does not fit its config: missing {missing[:5]} ({len(missing)}), '
                     f'unexpected {unexpected[:5]} ({len(unexpected)}).')
  return model.to(device).eval()

"""Mask R-CNN (SpineNet, RPN, Fast R-CNN and mask heads) in plain PyTorch, for inference with
spinenet-jax checkpoints.

Needs tools/pytorch_spinenet.py next to it: copy both files into your own code (torch; safetensors
for `load`; no jax). It mirrors spinenet_jax/modeling/maskrcnn.py, modeling/maskrcnn_heads.py and
ops/roi_align.py (themselves the official `maskrcnn_model.py`, `heads.py` and
`spatial_transform_ops.multilevel_crop_and_resize`).

    model = load('maskrcnn49.safetensors')     # from tools/convert_to_pytorch.py; in eval mode
    out = model(images)                        # float [B, 3, H, W]
    out['endpoints'][3]     # [B, C, ceil(H/8), ceil(W/8)]: SpineNet features (levels 3-7)
    out['rpn_scores'][3]    # [B, A, ceil(H/8), ceil(W/8)]: objectness logit of anchor a
    out['rpn_boxes'][3]     # [B, 4A, ...]: deltas (ty, tx, th, tw), channel anchor * 4 + coordinate
    classes, deltas = model.box_head(out['endpoints'], rois)   # [B, N, K], [B, N, 4K]
    masks = model.mask_head(out['endpoints'], rois, labels)    # [B, N, 28, 28] logits

RoIs are [B, N, 4] (ymin, xmin, ymax, xmax) in input pixels; K = num_classes with background 0.
Anchors, proposals (decode, NMS), detections and mask pasting are not part of the module (as for
RetinaNet): the JAX ops/proposals.py, ops/postprocess.py and evaluation/mask_pasting.py are the
reference. Parameter names are the JAX variable paths joined with '.', as in pytorch_spinenet.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

try:   # a package of the user's (both files copied into it), or both files on sys.path
  from . import pytorch_spinenet as ps
except ImportError:
  import pytorch_spinenet as ps

BOX_CROP_SIZE = 7      # RoIAlign output of the Fast R-CNN head
MASK_CROP_SIZE = 14    # RoIAlign output of the mask head (the transposed conv doubles it to 28)
CANONICAL_SIZE = 224.0   # a 224 x 224 RoI maps to level 4 (FPN paper, official)
CANONICAL_LEVEL = 4
load = ps.load
build_model = ps.build_model
read_metadata = ps.read_metadata


# Configuration: the "model" dict of a Mask R-CNN model.json.


@dataclasses.dataclass(frozen=True)
class RpnSettings:
  num_convs: int = 1
  num_filters: int = 256


@dataclasses.dataclass(frozen=True)
class FastRcnnSettings:
  num_convs: int = 4
  num_filters: int = 256
  num_fcs: int = 1
  fc_dims: int = 1024


@dataclasses.dataclass(frozen=True)
class MaskSettings:
  num_convs: int = 4
  num_filters: int = 256
  mask_target_size: int = 28


@dataclasses.dataclass(frozen=True)
class MaskRCNNSettings:
  backbone: ps.BackboneSettings
  rpn: RpnSettings
  frcnn: FastRcnnSettings
  mask: MaskSettings
  anchors_per_location: int
  num_classes: int


def parse_config(config: dict) -> MaskRCNNSettings:
  """The settings of a Mask R-CNN model dict (or a whole model.json)."""
  config = config.get('model', config)
  if config.get('type') != 'maskrcnn':
    raise ValueError(f'model type must be "maskrcnn", got {config.get("type")!r}')
  backbone = ps.backbone_settings(config['backbone'])
  # The heads' norms are the backbone's; the FC norm of the JAX head normalizes a [B, N, F] tensor,
  # which only batch norm (statistics per feature) does the same way here.
  if backbone.norm.type != 'batch':
    raise ValueError(f'Mask R-CNN exports support batch norm only, got {backbone.norm.type!r}')
  mask = ps._settings(MaskSettings, config.get('mask_head'), 'mask_head')
  if mask.mask_target_size != 2 * MASK_CROP_SIZE:
    raise ValueError(f'mask_target_size must be {2 * MASK_CROP_SIZE}, got {mask.mask_target_size}')
  anchors = config.get('anchors', {})
  per_location = anchors.get('num_scales', 1) * len(anchors.get('aspect_ratios', (1.0, 2.0, 0.5)))
  return MaskRCNNSettings(
      backbone, ps._settings(RpnSettings, config.get('rpn_head'), 'rpn_head'),
      ps._settings(FastRcnnSettings, config.get('frcnn_head'), 'frcnn_head'), mask,
      per_location, int(config.get('num_classes', 91)))


# Multilevel RoIAlign (spinenet_jax/ops/roi_align.py).


def exact_divide(x: torch.Tensor, divisor: float) -> torch.Tensor:
  """x / divisor, correctly rounded as TF and the JAX op divide: with a Python number as divisor,
  CUDA multiplies by its reciprocal (an ulp off about half the time, which moves extrapolated
  samples and flips boxes at level boundaries); a tensor divisor divides."""
  return x / torch.full((), divisor, dtype=x.dtype, device=x.device)


def assign_levels(boxes: torch.Tensor, min_level: int, max_level: int) -> torch.Tensor:
  """int64 [...] pyramid level of [..., 4] boxes (ymin, xmin, ymax, xmax, input pixels):
  floor(log2(sqrt(h w) / 224)) + 4, clipped; zero and negative areas land on min_level."""
  height = boxes[..., 2] - boxes[..., 0]
  width = boxes[..., 3] - boxes[..., 1]
  log_ratio = torch.log(exact_divide(torch.sqrt(height * width), CANONICAL_SIZE))
  log_two = torch.log(torch.full((), 2.0, dtype=boxes.dtype, device=boxes.device))
  levels = torch.floor(log_ratio / log_two) + CANONICAL_LEVEL
  # TF casts -inf (zero area) and NaN (negative area) to INT_MIN, which the clip sends to min_level.
  levels = torch.where(torch.isnan(levels), -math.inf, levels)
  return levels.clamp(min_level, max_level).long()


def grid_positions(starts: torch.Tensor, sizes: torch.Tensor, bounds: torch.Tensor,
                   output_size: int, sample_offset: float) -> tuple[torch.Tensor, torch.Tensor]:
  """One axis of the sampling grid: (lower, upper) indices [..., out, 2] clamped to [0, bounds],
  and the bilinear kernel [..., out, 2] from the *unclamped* coordinate (official
  `compute_grid_positions`: extrapolates before index 0, repeats the last index past the bound)."""
  steps = (torch.arange(output_size, dtype=torch.float64, device=starts.device) + sample_offset)
  steps = steps.to(starts.dtype)
  grid = starts[..., None] + exact_divide(steps * sizes[..., None], output_size)
  bound = bounds[..., None]
  lower = torch.minimum(torch.maximum(torch.floor(grid), torch.zeros_like(grid)), bound)
  upper = torch.minimum(lower + 1.0, bound)
  frac = grid - lower
  # Bounds are float (e.g. 7.5 on odd-sized maps); the int cast truncates, as TF's and JAX's.
  indices = torch.stack([lower, upper], dim=-1).long()
  return indices, torch.stack([1.0 - frac, frac], dim=-1)


def multilevel_roi_align(features: dict[int, torch.Tensor], boxes: torch.Tensor,
                         output_size: int = BOX_CROP_SIZE, sample_offset: float = 0.5
                         ) -> torch.Tensor:
  """RoIAlign of boxes [B, N, 4] (ymin, xmin, ymax, xmax, input pixels) from features
  {level: [B, C, H_l, W_l]} (consecutive levels): each box on the level of its size, one
  bilinear sample per bin at its centre. Returns [B, N, C, output_size, output_size].

  The grid runs in the boxes' dtype (the heads pass float32, as official), the interpolation in
  the features' dtype. Mirrors `spinenet_jax.ops.roi_align.multilevel_roi_align`.
  """
  levels = sorted(features)
  min_level, max_level = levels[0], levels[-1]
  if levels != list(range(min_level, max_level + 1)):
    raise ValueError(f'RoIAlign needs consecutive levels, got {levels}')
  b, n = boxes.shape[:2]
  device, dtype = boxes.device, boxes.dtype
  box_levels = assign_levels(boxes, min_level, max_level)
  # Powers of two in float32, as official tf.pow; dividing by them is exact.
  powers = torch.tensor([2.0**i for i in range(max_level + 1)], device=device)
  scale = powers[box_levels].to(dtype)
  starts_y, starts_x = boxes[..., 0] / scale, boxes[..., 1] / scale
  height = (boxes[..., 2] - boxes[..., 0]) / scale      # divided, not recomputed from the corners
  width = (boxes[..., 3] - boxes[..., 1]) / scale
  index = box_levels - min_level
  # The largest valid index from the min_level map, in float32 (equals "level size - 1" when the
  # input is a multiple of 2^max_level; otherwise can be fractional).
  min_height, min_width = features[min_level].shape[-2:]
  strides = powers[index]
  bound_y = (torch.full_like(strides, min_height) / strides - 1.0).to(dtype)
  bound_x = (torch.full_like(strides, min_width) / strides - 1.0).to(dtype)
  y_idx, ky = grid_positions(starts_y, height, bound_y, output_size, sample_offset)
  x_idx, kx = grid_positions(starts_x, width, bound_x, output_size, sample_offset)
  two_out = 2 * output_size
  # All levels flattened into one [B, P, C] table: one gather for RoIs on any mix of levels.
  flat = torch.cat([features[lv].flatten(2) for lv in levels], dim=2).transpose(1, 2)
  sizes = [features[lv].shape[-2] * features[lv].shape[-1] for lv in levels]
  offsets = torch.tensor([0] + sizes[:-1], device=device).cumsum(0)[index]
  widths = torch.tensor([features[lv].shape[-1] for lv in levels], device=device)[index]
  rows = offsets[..., None] + y_idx.reshape(b, n, two_out) * widths[..., None]
  points = rows[..., :, None] + x_idx.reshape(b, n, 1, two_out)          # [B, N, 2o, 2o]
  points = points.clamp(max=flat.shape[1] - 1)   # JAX clamps out-of-range gathers
  gathered = flat[torch.arange(b, device=device)[:, None, None, None], points]
  kernel = ky.reshape(b, n, two_out, 1) * kx.reshape(b, n, 1, two_out) * 4
  weighted = gathered * kernel.to(flat.dtype)[..., None]                   # [B, N, 2o, 2o, C]
  pooled = weighted.reshape(b, n, output_size, 2, output_size, 2, -1).sum(dim=(3, 5)) / 4
  return pooled.permute(0, 1, 4, 2, 3)


# Heads (spinenet_jax/modeling/maskrcnn_heads.py).


class DenseNorm(nn.Module):
  """Batch norm + activation over the features of [B, N, F] (statistics per feature)."""

  def __init__(self, features: int, norm: ps.NormSettings, activation: str):
    super().__init__()
    self.activation = activation
    self.bn = nn.BatchNorm1d(features, eps=norm.epsilon, momentum=1 - norm.momentum)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return ps._activate(self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape), self.activation)


class RpnHead(nn.Module):
  """Objectness logits {level: [B, A, h, w]} and box deltas {level: [B, 4A, h, w]}: 3x3 convs
  (`rpn`, `rpn_1`, ...) shared across levels, each with a per-level batch norm (`rpn_l{level}_bn`,
  `rpn_l{level}_bn_1`, ...) and the activation, then 1x1 `rpn_class` and `rpn_box`."""

  def __init__(self, s: RpnSettings, b: ps.BackboneSettings, anchors: int):
    super().__init__()
    self.num_convs, self.levels = s.num_convs, range(b.min_level, b.max_level + 1)
    cin = b.endpoints_num_filters
    for i in range(s.num_convs):
      suffix = '' if i == 0 else f'_{i}'
      self.add_module(f'rpn{suffix}', nn.Conv2d(cin, s.num_filters, 3, padding=1))
      for level in self.levels:
        self.add_module(f'rpn_l{level}_bn{suffix}', ps.Norm(s.num_filters, b.norm, b.activation))
      cin = s.num_filters
    self.rpn_class = nn.Conv2d(cin, anchors, 1)
    self.rpn_box = nn.Conv2d(cin, 4 * anchors, 1)

  def forward(self, features: dict[int, torch.Tensor]) -> tuple[dict, dict]:
    scores, boxes = {}, {}
    for level in self.levels:
      x = features[level]
      for i in range(self.num_convs):
        suffix = '' if i == 0 else f'_{i}'
        x = getattr(self, f'rpn_l{level}_bn{suffix}')(getattr(self, f'rpn{suffix}')(x))
      scores[level], boxes[level] = self.rpn_class(x), self.rpn_box(x)
    return scores, boxes


def _add_conv_norm_stack(module: nn.Module, prefix: str, count: int, cin: int, filters: int,
                         b: ps.BackboneSettings) -> int:
  """Adds `count` 3x3 SAME convs with bias `{prefix}{i}` and norms `{prefix}{i}_bn`; returns the
  output channels."""
  for i in range(count):
    module.add_module(f'{prefix}{i}', nn.Conv2d(cin, filters, 3, padding=1))
    module.add_module(f'{prefix}{i}_bn', ps.Norm(filters, b.norm, b.activation))
    cin = filters
  return cin


def _run_conv_norm_stack(module: nn.Module, prefix: str, count: int, x: torch.Tensor):
  for i in range(count):
    x = getattr(module, f'{prefix}{i}_bn')(getattr(module, f'{prefix}{i}')(x))
  return x


class FastRcnnHead(nn.Module):
  """RoI features [B, N, C, 7, 7] -> (class logits [B, N, K], box deltas [B, N, 4K]): convs
  `conv_{i}`, flattened in JAX's (H, W, C) order, FCs `fc6`, ... with batch norm, then
  `class_predict` and the class-specific `box_predict`."""

  def __init__(self, s: FastRcnnSettings, b: ps.BackboneSettings, num_classes: int):
    super().__init__()
    self.s = s
    cin = _add_conv_norm_stack(self, 'conv_', s.num_convs, b.endpoints_num_filters,
                               s.num_filters, b)
    dims = cin * BOX_CROP_SIZE**2
    for i in range(s.num_fcs):
      self.add_module(f'fc{i + 6}', nn.Linear(dims, s.fc_dims))
      self.add_module(f'fc{i + 6}_bn', DenseNorm(s.fc_dims, b.norm, b.activation))
      dims = s.fc_dims
    self.class_predict = nn.Linear(dims, num_classes)
    self.box_predict = nn.Linear(dims, 4 * num_classes)

  def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, n = crops.shape[:2]
    x = _run_conv_norm_stack(self, 'conv_', self.s.num_convs, crops.flatten(0, 1))
    x = x.permute(0, 2, 3, 1).reshape(b, n, -1)     # the JAX dense kernels expect (H, W, C) rows
    for i in range(self.s.num_fcs):
      x = getattr(self, f'fc{i + 6}_bn')(getattr(self, f'fc{i + 6}')(x))
    return self.class_predict(x), self.box_predict(x)


class MaskHead(nn.Module):
  """RoI features [B, N, C, 14, 14] -> mask logits [B, N, 28, 28, K]: convs `mask_conv_l{i}`,
  the 2x2 stride-2 transposed conv `conv5_mask` (out[2i + a, 2j + b] = sum_o W[o, c, a, b]
  x[i, j, o]: TF's conv2d_transpose, no spatial flip) with batch norm, 1x1 `mask_fcn_logits`."""

  def __init__(self, s: MaskSettings, b: ps.BackboneSettings, num_classes: int):
    super().__init__()
    self.s = s
    cin = _add_conv_norm_stack(self, 'mask_conv_l', s.num_convs, b.endpoints_num_filters,
                               s.num_filters, b)
    self.conv5_mask = nn.ConvTranspose2d(cin, s.num_filters, 2, stride=2)
    self.conv5_mask_bn = ps.Norm(s.num_filters, b.norm, b.activation)
    self.mask_fcn_logits = nn.Conv2d(s.num_filters, num_classes, 1)

  def forward(self, crops: torch.Tensor) -> torch.Tensor:
    b, n = crops.shape[:2]
    x = _run_conv_norm_stack(self, 'mask_conv_l', self.s.num_convs, crops.flatten(0, 1))
    logits = self.mask_fcn_logits(self.conv5_mask_bn(self.conv5_mask(x)))
    return logits.unflatten(0, (b, n)).permute(0, 1, 3, 4, 2)


class MaskRCNN(nn.Module):
  """SpineNet + RPN + Fast R-CNN + mask heads (JAX `spinenet_jax.modeling.maskrcnn.MaskRCNN`)."""

  def __init__(self, s: MaskRCNNSettings):
    super().__init__()
    self.settings = s
    self.backbone = ps.SpineNet(s.backbone)
    self.rpn = RpnHead(s.rpn, s.backbone, s.anchors_per_location)
    self.frcnn = FastRcnnHead(s.frcnn, s.backbone, s.num_classes)
    self.mask = MaskHead(s.mask, s.backbone, s.num_classes)

  def forward(self, images: torch.Tensor) -> dict[str, dict[int, torch.Tensor]]:
    """images [B, 3, H, W] -> {'endpoints', 'rpn_scores', 'rpn_boxes'}: {level: NCHW}."""
    features = self.backbone(images)
    scores, boxes = self.rpn(features)
    return {'endpoints': features, 'rpn_scores': scores, 'rpn_boxes': boxes}

  def box_head(self, features: dict[int, torch.Tensor], rois: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits [B, N, K], box deltas [B, N, 4K], channel 4 class + coordinate) of RoIs
    [B, N, 4] (ymin, xmin, ymax, xmax, input pixels; the RoIAlign grid runs in float32)."""
    return self.frcnn(multilevel_roi_align(features, rois.float(), BOX_CROP_SIZE))

  def mask_head(self, features: dict[int, torch.Tensor], rois: torch.Tensor,
                classes: torch.Tensor | None = None) -> torch.Tensor:
    """Mask logits of RoIs [B, N, 4]: [B, N, 28, 28] for int `classes` [B, N] in [0, K), or
    [B, N, 28, 28, K] for every class when `classes` is None."""
    logits = self.mask(multilevel_roi_align(features, rois.float(), MASK_CROP_SIZE))
    if classes is None:
      return logits
    index = classes.long()[:, :, None, None, None].expand(*logits.shape[:-1], 1)
    return logits.gather(-1, index)[..., 0]


def build_maskrcnn(config: dict) -> MaskRCNN:
  """The (untrained) Mask R-CNN of a model.json dict (`pytorch_spinenet.build_model` calls this)."""
  model = MaskRCNN(parse_config(config))
  model.config = config.get('model', config)
  return model

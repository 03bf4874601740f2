"""RetinaNet anchors, generated and ordered as the official `dataloader/anchor.py`.

For each level, then each scale, then each aspect ratio (w/h), an anchor of size
anchor_size * 2^level * 2^(scale / num_scales) is centred on every cell: centres at
range(stride / 2, size, stride). Boxes are [ymin, xmin, ymax, xmax] in pixels of the padded image,
flattened in (y, x, anchor) order per level and concatenated over levels. Arithmetic follows the
official float32 ops: the half sizes are Python floats, the centres float32.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
  min_level: int = 3
  max_level: int = 7
  num_scales: int = 3
  aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5)
  anchor_size: float = 4.0   # official default; the 49S/49/96 RetinaNet yamls use 3.0

  @property
  def anchors_per_location(self) -> int:
    return self.num_scales * len(self.aspect_ratios)


def level_anchors(config: AnchorConfig, level: int, image_size: tuple[int, int]) -> np.ndarray:
  """[H_l * W_l * A, 4] float32 anchors of one level, in (y, x, anchor) order."""
  stride = 2**level
  x = np.arange(stride / 2, image_size[1], stride, dtype=np.float32)
  y = np.arange(stride / 2, image_size[0], stride, dtype=np.float32)
  xv, yv = np.meshgrid(x, y)
  xv, yv = xv.reshape(-1), yv.reshape(-1)
  boxes = []
  for scale in range(config.num_scales):
    for aspect_ratio in config.aspect_ratios:
      base = config.anchor_size * stride * 2 ** (scale / float(config.num_scales))
      half_x = np.float32(base * aspect_ratio**0.5 / 2.0)
      half_y = np.float32(base * aspect_ratio**-0.5 / 2.0)
      boxes.append(np.stack([yv - half_y, xv - half_x, yv + half_y, xv + half_x], axis=1))
  return np.stack(boxes, axis=1).reshape(-1, 4)


def generate_anchors(config: AnchorConfig, image_size: tuple[int, int]) -> np.ndarray:
  """All anchors [N, 4] (float32) of a padded `image_size` (height, width)."""
  return np.concatenate([level_anchors(config, level, image_size)
                         for level in range(config.min_level, config.max_level + 1)], axis=0)


def level_shapes(config: AnchorConfig, image_size: tuple[int, int]) -> dict[int, tuple[int, int]]:
  """(H_l, W_l) of each level's anchor grid (official `unpack_labels`: size / 2^level, truncated)."""
  return {level: (int(image_size[0] / 2**level), int(image_size[1] / 2**level))
          for level in range(config.min_level, config.max_level + 1)}


def unpack_levels(values: np.ndarray, config: AnchorConfig, image_size: tuple[int, int]) -> dict:
  """Splits [..., N, D] per-anchor values into {level: [..., H_l, W_l, A * D]}."""
  shapes = level_shapes(config, image_size)
  total = sum(h * w for h, w in shapes.values()) * config.anchors_per_location
  if total != values.shape[-2]:
    raise ValueError(f'{values.shape[-2]} anchors do not tile image size {image_size} '
                     f'({total} expected); the padded size must be a multiple of '
                     f'2^{config.max_level}.')
  out, start = {}, 0
  lead = values.shape[:-2]
  for level, (h, w) in shapes.items():
    n = h * w * config.anchors_per_location
    out[level] = values[..., start:start + n, :].reshape(*lead, h, w, -1)
    start += n
  return out


def pack_levels(per_level: dict, last_dim: int) -> np.ndarray:
  """Inverse of `unpack_levels`: {level: [..., H, W, A * D]} -> [..., N, D] in level order."""
  import jax.numpy as jnp  # works for numpy and jax arrays alike
  parts = [v.reshape(*v.shape[:-3], -1, last_dim) for _, v in sorted(per_level.items())]
  return jnp.concatenate(parts, axis=-2)

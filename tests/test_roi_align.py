"""Multilevel RoIAlign against hand-computed cases and a line-by-line numpy transcription of the
official `multilevel_crop_and_resize` (gather path), at every level, for tiny, huge, border and
outside boxes, in float64 and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax.ops import roi_align

MIN_LEVEL, MAX_LEVEL = 3, 7


def pyramid(batch, size, channels, dtype, seed=0, fn=None):
  rng = np.random.default_rng(seed)
  out = {}
  for level in range(MIN_LEVEL, MAX_LEVEL + 1):
    h, w = size[0] // 2**level, size[1] // 2**level
    if fn is None:
      out[level] = rng.normal(size=(batch, h, w, channels)).astype(dtype)
    else:
      y, x = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
      out[level] = np.broadcast_to(fn(y, x, level)[None, :, :, None],
                                   (batch, h, w, channels)).astype(dtype)
  return out


def official_numpy(features, boxes, output_size, sample_offset=0.5):
  """The official algorithm, step by step, in numpy (grid arithmetic in the boxes' dtype)."""
  levels_present = sorted(features)
  min_level, max_level = levels_present[0], levels_present[-1]
  bdt = boxes.dtype.type
  batch, num_boxes = boxes.shape[:2]
  box_width = boxes[:, :, 3] - boxes[:, :, 1]
  box_height = boxes[:, :, 2] - boxes[:, :, 0]
  with np.errstate(divide='ignore', invalid='ignore'):
    areas_sqrt = np.sqrt(box_height * box_width)
    lv = np.floor(np.log(areas_sqrt / bdt(224.0)) / np.log(bdt(2.0))) + bdt(4.0)
  lv = np.where(np.isfinite(lv), lv, -2.0**31)       # TF's cast of -inf / NaN: INT_MIN
  levels = np.minimum(max_level, np.maximum(lv.astype(np.int64), min_level))
  scale = np.power(np.float32(2.0), levels.astype(np.float32)).astype(boxes.dtype)
  boxes = boxes / scale[:, :, None]
  box_width = box_width / scale
  box_height = box_height / scale
  boxes = np.concatenate([boxes[:, :, 0:2], box_height[..., None], box_width[..., None]], -1)
  max_h, max_w = features[min_level].shape[1:3]
  level_strides = np.power(np.float32(2.0), (levels - min_level).astype(np.float32))
  boundary = np.stack([np.float32(max_h) / level_strides - np.float32(1),
                       np.float32(max_w) / level_strides - np.float32(1)], -1).astype(boxes.dtype)
  gx, gy = [], []
  for i in range(output_size):
    gx.append(boxes[:, :, 1] + (i + sample_offset) * boxes[:, :, 3] / output_size)
    gy.append(boxes[:, :, 0] + (i + sample_offset) * boxes[:, :, 2] / output_size)
  gx, gy = np.stack(gx, 2).astype(boxes.dtype), np.stack(gy, 2).astype(boxes.dtype)
  y0 = np.minimum(np.maximum(0.0, np.floor(gy)), boundary[:, :, 0:1])
  x0 = np.minimum(np.maximum(0.0, np.floor(gx)), boundary[:, :, 1:2])
  y1 = np.minimum(y0 + 1, boundary[:, :, 0:1])
  x1 = np.minimum(x0 + 1, boundary[:, :, 1:2])
  ly, lx = gy - y0, gx - x0
  ky = np.stack([1.0 - ly, ly], 3).reshape(batch, num_boxes, 2 * output_size, 1)
  kx = np.stack([1.0 - lx, lx], 3).reshape(batch, num_boxes, 1, 2 * output_size)
  yi = np.stack([y0, y1], 3).reshape(batch, num_boxes, -1).astype(np.int64)
  xi = np.stack([x0, x1], 3).reshape(batch, num_boxes, -1).astype(np.int64)
  out = np.zeros((batch, num_boxes, 2 * output_size, 2 * output_size,
                  features[min_level].shape[-1]), features[min_level].dtype)
  for b in range(batch):
    for n in range(num_boxes):
      fmap = features[levels[b, n]][b]
      out[b, n] = fmap[yi[b, n][:, None], xi[b, n][None, :]]
  kernel = (ky * kx * 4).astype(out.dtype)
  out = out * kernel[..., None]
  out = out.reshape(batch, num_boxes, output_size, 2, output_size, 2, -1)
  return out.mean(axis=(3, 5))


def random_boxes(rng, batch, num, image):
  """Boxes at every level: tiny (incl. zero area), mid, huge, at the borders and outside."""
  h, w = image
  sizes = np.concatenate([[0.0, 1e-3, 2.0], rng.uniform(4, 900, num - 8),
                          [1800.0, 3000.0, 223.9999, 224.0, 448.0]])
  rng.shuffle(sizes)
  aspect = rng.uniform(0.5, 2.0, num)
  bh, bw = sizes * np.sqrt(aspect), sizes / np.sqrt(aspect)
  y0 = rng.uniform(-0.3 * h, 1.1 * h, num)
  x0 = rng.uniform(-0.3 * w, 1.1 * w, num)
  boxes = np.stack([y0, x0, y0 + bh, x0 + bw], -1)
  boxes[:4] = [[0, 0, h, w], [-5.5, -3.25, 40, 50], [h - 20, w - 30, h + 10, w + 5],
               [-50, -60, -10, -20]]
  # A box within float rounding of a level boundary (sqrt(area) = 224 * 2^k) may land on either
  # level depending on the log implementation (TF's, numpy's, XLA's vectorized one differ by an
  # ulp); exact boundaries are tested on exact squares instead.
  with np.errstate(divide='ignore', invalid='ignore'):
    octave = np.log2(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 224)
    near = np.abs(octave - np.round(octave)) < 1e-4
  boxes[near] *= np.array([1, 1, 1.01, 1.01])
  return np.broadcast_to(boxes, (batch, num, 4)).copy()


@pytest.mark.parametrize('image', [(256, 256), (256, 384)])
@pytest.mark.parametrize('output_size', [7, 14])
def test_matches_official_transcription_float64(image, output_size):
  rng = np.random.default_rng(1)
  features = pyramid(2, image, 3, np.float64)
  boxes = random_boxes(rng, 2, 40, image).astype(np.float64)
  boxes[1] = boxes[1][::-1]
  with jax.enable_x64(True):
    ours = roi_align.multilevel_roi_align({k: jnp.asarray(v) for k, v in features.items()},
                                          jnp.asarray(boxes), output_size)
    ours = np.asarray(ours)
  np.testing.assert_allclose(ours, official_numpy(features, boxes, output_size), rtol=0,
                             atol=1e-12)


def test_float32_is_within_the_official_float32_noise_and_jits():
  """In float32 the official algorithm itself is off the exact (float64) result by its rounding
  noise, large where RoIs extrapolate; ours must stay within 4x that noise (XLA's CPU division is
  not the correctly rounded one numpy and TF use, so bit equality is not the bar)."""
  rng = np.random.default_rng(2)
  image = (256, 256)
  features = pyramid(2, image, 8, np.float32)
  boxes = random_boxes(rng, 2, 64, image).astype(np.float32)
  fn = jax.jit(lambda f, b: roi_align.multilevel_roi_align(f, b, 7))
  ours = np.asarray(fn({k: jnp.asarray(v) for k, v in features.items()}, jnp.asarray(boxes)))
  assert ours.shape == (2, 64, 7, 7, 8) and ours.dtype == np.float32
  exact = official_numpy({k: v.astype(np.float64) for k, v in features.items()},
                         boxes.astype(np.float64), 7)
  noise = np.abs(official_numpy(features, boxes, 7) - exact).max()
  assert 0 < noise < 1e-3
  assert np.abs(ours - exact).max() <= 4 * noise


def test_float32_grid_with_float64_features():
  """Official: the grid runs in the RoIs' dtype (float32) even with float64 features."""
  rng = np.random.default_rng(3)
  features = pyramid(1, (256, 256), 2, np.float64)
  boxes = random_boxes(rng, 1, 24, (256, 256)).astype(np.float32) + np.float32(0.1)
  with jax.enable_x64(True):
    ours = np.asarray(roi_align.multilevel_roi_align(
        {k: jnp.asarray(v) for k, v in features.items()}, jnp.asarray(boxes), 7))
    assert ours.dtype == np.float64
  np.testing.assert_allclose(ours, official_numpy(features, boxes, 7), rtol=0, atol=1e-12)
  wrong = official_numpy(features, boxes.astype(np.float64), 7)   # grid in float64: differs
  assert np.abs(ours - wrong).max() > 1e-9


def test_level_assignment_boundaries():
  sides = np.array([0.0, 100.0, 223.99, 224.0, 447.99, 448.0, 896.0, 1792.0, 5000.0, 10.0])
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
  boxes[-1] = [5, 5, 0, 10]    # negative height: NaN area
  levels = roi_align.assign_levels(jnp.asarray(boxes, jnp.float32), 3, 7)
  np.testing.assert_array_equal(levels, [3, 3, 3, 4, 4, 5, 6, 7, 7, 3])


def test_linear_features_are_sampled_exactly_and_extrapolated_before_the_edge():
  """Bilinear sampling of f(y, x) = 3y + x returns f at each bin centre, also before the top /
  left edge (official extrapolation); past the far edge the last row and column repeat."""
  features = pyramid(1, (256, 256), 1, np.float32, fn=lambda y, x, level: 3.0 * y + x)
  # A 224 x 224 box -> level 4 (16 px per cell); starts 40 px before the image.
  box = np.array([[[-40.0, -40.0, 184.0, 184.0]]], np.float32)
  out = np.asarray(roi_align.multilevel_roi_align(
      {k: jnp.asarray(v) for k, v in features.items()}, jnp.asarray(box), 7))[0, 0, :, :, 0]
  centres = (-40.0 + (np.arange(7) + 0.5) * 224.0 / 7) / 16.0   # level-4 coordinates
  expected = 3.0 * centres[:, None] + centres[None, :]
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
  assert out[0, 0] < 0                                         # extrapolated, not clamped
  # Past the bottom-right edge: clamped to the last index (15 on the 16 x 16 level-4 map).
  box = np.array([[[200.0, 200.0, 424.0, 424.0]]], np.float32)
  out = np.asarray(roi_align.multilevel_roi_align(
      {k: jnp.asarray(v) for k, v in features.items()}, jnp.asarray(box), 7))[0, 0, :, :, 0]
  assert out[-1, -1] == pytest.approx(3.0 * 15 + 15)

"""Layer semantics against hand-computed values and TensorFlow's own kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from spinenet_jax.modeling import layers


def _conv(padding_mode, x, kernel, strides):
  unit = layers.ConvNorm(1, kernel.shape[0], strides, None, padding_mode)
  variables = unit.init(jax.random.key(0), x, False)
  params = jax.tree_util.tree_map(lambda p: p, variables['params'])
  params['conv']['kernel'] = kernel
  # Identity norm: scale 1, bias 0, mean 0, var 1 - epsilon.
  stats = {'norm': {'bn': {'mean': jnp.zeros(1), 'var': jnp.ones(1) - 1e-4}}}
  return unit.apply({'params': params, 'batch_stats': stats}, x, False)


def test_fixed_padding_is_explicit_and_differs_from_same():
  x = jnp.ones((1, 4, 4, 1))
  kernel = jnp.ones((3, 3, 1, 1))
  fixed = np.asarray(_conv('fixed', x, kernel, 2))[0, :, :, 0]
  same = np.asarray(_conv('same', x, kernel, 2))[0, :, :, 0]
  # fixed pads 1/1: the top-left window sees 2x2 ones; SAME pads 0/1 on an even input: 3x3 ones.
  np.testing.assert_allclose(fixed, [[4, 6], [6, 9]], rtol=1e-5)
  np.testing.assert_allclose(same, [[9, 6], [6, 4]], rtol=1e-5)


@pytest.mark.parametrize('size', [7, 8, 9, 16])
@pytest.mark.parametrize('kernel_size', [3, 7])
def test_fixed_padding_equals_tf_pad_then_valid(size, kernel_size):
  rng = np.random.default_rng(size + kernel_size)
  x = rng.normal(size=(2, size, size + 1, 3)).astype(np.float32)
  kernel = rng.normal(size=(kernel_size, kernel_size, 3, 1)).astype(np.float32)
  pad = ((kernel_size - 1) // 2, kernel_size - 1 - (kernel_size - 1) // 2)
  ref = tf.nn.conv2d(tf.pad(x, [(0, 0), pad, pad, (0, 0)]), kernel, 2, 'VALID').numpy()
  ours = np.asarray(_conv('fixed', jnp.asarray(x), jnp.asarray(kernel), 2))
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  ref_same = tf.nn.conv2d(x, kernel, 2, 'SAME').numpy()
  np.testing.assert_allclose(np.asarray(_conv('same', jnp.asarray(x), jnp.asarray(kernel), 2)),
                             ref_same, rtol=1e-4, atol=1e-4)


def test_legacy_nearest_indices_hand_computed():
  np.testing.assert_array_equal(layers.legacy_nearest_indices(4, 6), [0, 0, 1, 2, 2, 3])
  np.testing.assert_array_equal(layers.legacy_nearest_indices(10, 3), [0, 3, 6])


@pytest.mark.parametrize('in_size, out_size', [(3, 10), (4, 6), (10, 3), (10, 6), (7, 20), (20, 7),
                                               (5, 13), (13, 5), (25, 9), (9, 25), (1, 4)])
def test_legacy_nearest_resize_equals_tf1(in_size, out_size):
  x = np.arange(in_size * (in_size + 2), dtype=np.float32).reshape(1, in_size, in_size + 2, 1)
  out_hw = (out_size, out_size + 1)
  ref = tf.compat.v1.image.resize_nearest_neighbor(x, out_hw, align_corners=False,
                                                   half_pixel_centers=False).numpy()
  np.testing.assert_array_equal(np.asarray(layers.legacy_nearest_resize(jnp.asarray(x), out_hw)), ref)


def test_nearest_upsample_repeats_pixels():
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(np.asarray(layers.nearest_upsample(x, 2))[0, :, :, 0],
                                [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


@pytest.mark.parametrize('size, pool, stride', [(10, 3, 2), (11, 3, 2), (20, 5, 4), (21, 5, 2),
                                                (7, 3, 2)])
def test_max_pool_same_equals_tf(size, pool, stride):
  x = np.random.default_rng(0).normal(size=(1, size, size + 3, 2)).astype(np.float32)
  ref = tf.nn.max_pool2d(x, pool, stride, 'SAME').numpy()
  np.testing.assert_array_equal(np.asarray(layers.max_pool_same(jnp.asarray(x), pool, stride)), ref)


def test_swish_and_relu():
  x = jnp.array([-2.0, 0.0, 3.0])
  np.testing.assert_allclose(layers.activation_fn('swish')(x), x * jax.nn.sigmoid(x), rtol=1e-6)
  np.testing.assert_array_equal(layers.activation_fn('relu')(x), [0, 0, 3])


def test_drop_connect_drops_whole_samples_and_rescales():
  x = jnp.ones((4096, 2, 2, 3))
  out = np.asarray(layers.drop_connect(x, 0.25, jax.random.key(1)))
  per_sample = out.reshape(4096, -1)
  # Each sample is either dropped entirely or scaled by 1 / keep.
  assert set(np.unique(per_sample).tolist()) <= {0.0, float(np.float32(1) / np.float32(0.75))}
  assert np.all(per_sample.min(1) == per_sample.max(1))
  assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03


def test_dropblock_drops_blocks_and_renormalizes():
  x = jnp.ones((8, 32, 32, 4))
  out = np.asarray(layers.dropblock(x, 0.9, 5, jax.random.key(0)))
  # Renormalized by the fraction kept over the whole tensor: the mean is exactly preserved.
  np.testing.assert_allclose(out.mean(), 1.0, rtol=1e-5)
  dropped = out == 0
  assert 0.05 < dropped.mean() < 0.16
  # Dropped pixels come in 5x5 blocks: every dropped pixel has a fully dropped 5x5 window around it.
  d = dropped[0, :, :, 0].astype(int)
  windows = np.lib.stride_tricks.sliding_window_view(np.pad(d, 4), (5, 5)).min(axis=(2, 3))
  ys, xs = np.nonzero(d)
  assert all(windows[y:y + 5, x:x + 5].max() == 1 for y, x in zip(ys, xs))


def _map(*rows):
  """A hand-drawn [H, W] keep mask: '#' dropped (0), '.' kept (1)."""
  return np.array([[0.0 if c == '#' else 1.0 for c in row] for row in rows], np.float32)


def _dropblock_with_noise(monkeypatch, x, keep_prob, block_size, noise):
  """layers.dropblock with its uniform noise replaced by `noise` (the official op draws
  U[0, 1) of the input's shape and seeds a block wherever a valid position's noise < gamma)."""
  calls = []

  def uniform(key, shape, dtype=jnp.float32, *args, **kwargs):
    assert tuple(shape) == x.shape
    calls.append(shape)
    return jnp.asarray(noise, dtype)
  monkeypatch.setattr(jax.random, 'uniform', uniform)
  out = np.asarray(layers.dropblock(jnp.asarray(x), keep_prob, block_size, jax.random.key(0)))
  assert len(calls) == 1
  return out


def test_dropblock_block_3_hand_computed(monkeypatch):
  # Official gamma for keep 0.9, 8x8, block 3: 0.1 * 64 / 3^2 / (8 - 3 + 1)^2 = 0.019753.
  gamma = 0.1 * 64 / 9 / 36
  assert gamma == pytest.approx(0.019753, abs=1e-6)
  noise = np.ones((2, 8, 8, 2), np.float32)
  noise[0, 3, 4, 0] = 0.99 * gamma   # fires: drops rows 2-4, cols 3-5
  noise[0, 5, 5, 0] = 1.01 * gamma   # just above gamma: no seed
  noise[0, 0, 4, 1] = 0.0            # row 0 is outside the valid seeds (1 <= idx < 7): no seed
  noise[0, 7, 7, 1] = 0.0            # row and column 7 too
  noise[1, 6, 6, 0] = 0.0            # last valid position: rows 5-7, cols 5-7
  noise[1, 1, 1, 1] = 0.0            # first valid position: rows 0-2, cols 0-2 ...
  noise[1, 2, 2, 1] = 0.0            # ... and an overlapping block, rows 1-3, cols 1-3
  expected = np.ones((2, 8, 8, 2), np.float32)
  expected[0, :, :, 0] = _map('........',
                              '........',
                              '...###..',
                              '...###..',
                              '...###..',
                              '........',
                              '........',
                              '........')
  expected[1, :, :, 0] = _map('........',
                              '........',
                              '........',
                              '........',
                              '........',
                              '.....###',
                              '.....###',
                              '.....###')
  expected[1, :, :, 1] = _map('###.....',
                              '####....',
                              '####....',
                              '.###....',
                              '........',
                              '........',
                              '........',
                              '........')
  # 9 + 9 + 14 = 32 of 256 values dropped: the rest is scaled by 256 / 224 (fraction kept over
  # the whole tensor, all images and channels).
  assert expected.sum() == 224
  x = np.arange(1, 257, dtype=np.float32).reshape(2, 8, 8, 2)
  out = _dropblock_with_noise(monkeypatch, x, 0.9, 3, noise)
  np.testing.assert_array_equal(out == 0, expected == 0)
  np.testing.assert_allclose(out, x * expected * (256 / 224), rtol=1e-6)


def test_dropblock_even_block_4_hand_computed(monkeypatch):
  # Block 4 on 8x8: gamma = 0.1 * 64 / 16 / 5^2 = 0.016; valid seeds 4 // 2 = 2 <= idx < 8 - 3 // 2
  # = 7. The min-pool is TF SAME with stride 1: total pad 3, 1 before and 2 after, so a seed at s
  # drops s - 2 .. s + 1 (the block sits up-left of an even-sized seed).
  gamma = 0.1 * 64 / 16 / 25
  noise = np.ones((1, 8, 8, 2), np.float32)
  noise[0, 2, 2, 0] = 0.99 * gamma   # rows 0-3, cols 0-3 (touches the top-left border)
  noise[0, 6, 6, 0] = 0.99 * gamma   # rows 4-7, cols 4-7 (touches the bottom-right border)
  noise[0, 6, 2, 0] = 0.99 * gamma   # rows 4-7, cols 0-3
  noise[0, 4, 4, 0] = 1.01 * gamma   # no seed
  noise[0, 3, 5, 1] = 0.0            # rows 1-4, cols 3-6
  noise[0, 1, 4, 1] = 0.0            # row 1 < 2: not a valid seed
  noise[0, 4, 7, 1] = 0.0            # column 7: not a valid seed
  expected = np.ones((1, 8, 8, 2), np.float32)
  expected[0, :, :, 0] = _map('####....',
                              '####....',
                              '####....',
                              '####....',
                              '########',
                              '########',
                              '########',
                              '########')
  expected[0, :, :, 1] = _map('........',
                              '...####.',
                              '...####.',
                              '...####.',
                              '...####.',
                              '........',
                              '........',
                              '........')
  # 48 + 16 = 64 of 128 dropped: the kept values are doubled.
  assert expected.sum() == 64
  x = np.arange(1, 129, dtype=np.float32).reshape(1, 8, 8, 2)
  out = _dropblock_with_noise(monkeypatch, x, 0.9, 4, noise)
  np.testing.assert_array_equal(out == 0, expected == 0)
  np.testing.assert_allclose(out, x * expected * 2.0, rtol=1e-6)


def test_dropblock_block_covering_the_map_hand_computed(monkeypatch):
  # Block 7 on 5x5 maps: the block is clipped to 5, the only valid seed is the centre
  # (2 <= idx < 3), gamma = 0.2 * 25 / 5^2 / 1 = 0.2, and a seed drops the whole map (the official
  # reduce_min branch).
  noise = np.ones((4, 5, 5, 1), np.float32)
  noise[0, 2, 2, 0] = 0.99 * 0.2     # drops image 0
  noise[1, 0, 0, 0] = 0.0            # not the centre: kept
  noise[2, 2, 2, 0] = 1.01 * 0.2     # above gamma: kept
  x = np.arange(1, 101, dtype=np.float32).reshape(4, 5, 5, 1)
  out = _dropblock_with_noise(monkeypatch, x, 0.8, 7, noise)
  expected = x * 4 / 3
  expected[0] = 0
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_dropblock_whole_map_when_block_covers_it():
  x = jnp.ones((256, 5, 5, 1))
  out = np.asarray(layers.dropblock(x, 0.8, 7, jax.random.key(0)))
  per_map = out.reshape(256, -1)
  assert np.all(per_map.min(1) == per_map.max(1))   # whole 5x5 maps kept or dropped together


def test_batch_norm_training_updates_running_stats_with_momentum():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 5, 5, 2)).astype(np.float32))
  unit = layers.Norm(layers.NormConfig(momentum=0.9, epsilon=1e-3))
  variables = unit.init(jax.random.key(0), x, False)
  y, updates = unit.apply(variables, x, True, mutable=['batch_stats'])
  xn = np.asarray(x)
  mean, var = xn.mean((0, 1, 2)), xn.var((0, 1, 2))  # biased variance, as the official sync BN
  np.testing.assert_allclose(updates['batch_stats']['bn']['mean'], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['bn']['var'], 0.9 + 0.1 * var, rtol=1e-5)
  np.testing.assert_allclose(y, (xn - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-5)


def test_dropblock_on_maps_smaller_than_the_block_is_finite():
  x = jnp.ones((64, 2, 2, 3))
  out = np.asarray(layers.dropblock(x, 0.9, 3, jax.random.key(0)))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out.mean(), 1.0, rtol=1e-5)

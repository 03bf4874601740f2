"""Batch norm under data parallelism: statistics cover the global batch, sharded or not."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import random_variables
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig


def _train_step(model):
  def step(variables, images):
    out, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
    return out, updates['batch_stats']
  return step


def test_batch_norm_same_on_one_device_and_sharded_over_eight():
  # Float64 so that reduction order (float32 noise ~1e-4 through a deep net) cannot hide a mistake.
  with jax.enable_x64(True):
    _check_sharded_equals_single()


def _check_sharded_equals_single():
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  model = SpineNet(SpineNetConfig(filter_size_scale=0.25, endpoints_num_filters=16), dtype=jnp.float64)
  rng = np.random.default_rng(0)
  # Per-sample offsets make each shard's own statistics differ from the global ones.
  images = rng.normal(size=(8, 64, 64, 3)) + np.arange(8)[:, None, None, None]
  variables = random_variables(model, (1, 64, 64, 3))
  variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), variables)
  step = _train_step(model)

  single = jax.jit(step)(variables, jnp.asarray(images))

  mesh = Mesh(np.array(jax.devices()), ('data',))
  sharded_images = jax.device_put(images, NamedSharding(mesh, P('data')))
  replicated = jax.device_put(variables, NamedSharding(mesh, P()))
  sharded = jax.jit(step, out_shardings=(NamedSharding(mesh, P('data')), NamedSharding(mesh, P())))(
      replicated, sharded_images)
  assert len(sharded_images.sharding.device_set) == 8

  for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(sharded)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-10)

  # The check can fail: statistics of one shard alone differ from the global ones.
  _, local_stats = jax.jit(step)(variables, jnp.asarray(images[:1]))
  g = np.asarray(single[1]['stem']['norm']['bn']['mean'])
  l = np.asarray(local_stats['stem']['norm']['bn']['mean'])
  assert np.abs(g - l).max() > 1e-3

"""Training pieces: schedules, the optimizer, the train step, data parallelism, checkpoints."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_helpers import assert_trees_close, random_batch, tiny_config

from spinenet_jax import losses, sharding
from spinenet_jax.training import checkpoints as ckpt_lib
from spinenet_jax.training import loop, settings
from spinenet_jax.training import optimizer as opt_lib
from spinenet_jax.training.trainer import Trainer


def test_step_schedule_hand_computed():
  lr = opt_lib.step_schedule(0.28, 2000, 0.0067, (217610, 226870), (0.028, 0.0028))
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 1000, 1999, 2000, 217609, 217610, 226870, 231499)],
      [0.0067, 0.0067 + 0.5 * (0.28 - 0.0067), 0.0067 + 1999 / 2000 * (0.28 - 0.0067), 0.28,
       0.28, 0.028, 0.0028, 0.0028], rtol=1e-6)


def test_cosine_schedule_hand_computed():
  lr = opt_lib.cosine_schedule(0.1, 10, 0.0, 110)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 60, 110, 200)],
                             [0.0, 0.05, 0.1, 0.05, 0.0, 0.0], atol=1e-7)


def test_schedule_rejects_mismatched_levels():
  with pytest.raises(ValueError, match='same length'):
    opt_lib.step_schedule(0.1, 0, 0.0, (10, 20), (0.01,))


def test_sgd_momentum_is_tf_momentum_optimizer():
  # TF MomentumOptimizer: accum = 0.9 accum + g; w -= lr accum (lr 0.1, no clipping).
  config = tiny_config(warmup_steps=0, init_learning_rate=0.1, learning_rate_steps=(),
                       learning_rate_levels=(), gradient_clip_norm=0.0)
  tx = opt_lib.make_optimizer(config.train)
  w = jnp.array([1.0, -2.0])
  state = tx.init(w)
  accum = np.zeros(2)
  expected = np.array([1.0, -2.0])
  for g in ([0.5, 1.0], [-1.0, 2.0], [0.25, 0.0]):
    updates, state = tx.update(jnp.array(g), state, w)
    w = optax.apply_updates(w, updates)
    accum = 0.9 * accum + np.array(g)
    expected = expected - 0.1 * accum
  np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-6)


def test_clipping_by_global_norm():
  config = tiny_config(warmup_steps=0, init_learning_rate=1.0, learning_rate_steps=(),
                       learning_rate_levels=(), gradient_clip_norm=10.0, momentum=0.0)
  tx = opt_lib.make_optimizer(config.train)
  g = {'a': jnp.array([30.0, 0.0]), 'b': jnp.array([40.0])}      # norm 50 -> scaled by 1/5
  updates, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(np.asarray(updates['a']), [-6.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates['b']), [-8.0], rtol=1e-6)


@pytest.fixture(scope='module')
def trainer_and_state():
  trainer = Trainer(settings.finalize(tiny_config()), sharding.make_mesh(jax.devices()[:1]))
  return trainer, trainer.new_state()


def test_train_step_learns_and_counts(trainer_and_state):
  trainer, state = trainer_and_state
  state = jax.tree_util.tree_map(jnp.copy, state)
  batch = random_batch()
  history = []
  for _ in range(4):
    state, metrics = trainer.train_step(state, batch)
    history.append(float(metrics['model_loss']))
  assert int(state.step) == 4 and int(state.nonfinite_step) == -1
  assert history[-1] < history[0], history
  assert float(metrics['l2_loss']) > 0 and float(metrics['num_positives']) > 0


def test_nonfinite_loss_skips_the_update_and_names_the_step(trainer_and_state):
  trainer, state = trainer_and_state
  state = jax.tree_util.tree_map(jnp.copy, state)
  before = jax.device_get(state.params)
  bad = random_batch()
  bad['images'][0, 0, 0, 0] = np.nan
  state, _ = trainer.train_step(state, random_batch())
  after_good = jax.device_get(state.params)
  state, metrics = trainer.train_step(state, bad)
  assert not np.isfinite(float(metrics['total_loss']))
  assert int(state.nonfinite_step) == 1 and int(state.step) == 2
  for a, b in zip(jax.tree_util.tree_leaves(after_good), jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                        jax.tree_util.tree_leaves(after_good)))
  with pytest.raises(loop.NonFiniteLossError, match='at step 1;.*step 7'):
    loop.check_finite(state, 7)


def test_eight_devices_match_one(trainer_and_state):
  assert jax.device_count() == 8
  one, state = trainer_and_state
  eight = Trainer(one.config, sharding.make_mesh())
  s1 = jax.tree_util.tree_map(jnp.copy, state)
  s8 = jax.device_put(jax.device_get(state), eight.replicated)
  for seed in range(3):
    batch = random_batch(seed=seed)
    s1, m1 = one.train_step(s1, batch)
    s8, m8 = eight.train_step(s8, batch)
    assert len(jax.tree_util.tree_leaves(s8.params)[0].sharding.device_set) == 8
    for k in ('total_loss', 'cls_loss', 'box_loss'):
      np.testing.assert_allclose(float(m1[k]), float(m8[k]), rtol=1e-5)
  # The third step clips (norm ~12).
  assert_trees_close(jax.device_get(s1), jax.device_get(s8))


def test_half_written_and_unreadable_checkpoints_fall_back(tmp_path, caplog):
  directory = str(tmp_path / 'checkpoints')
  tree = {'w': jnp.arange(4.0), 'step': jnp.array(0)}
  ckpt = ckpt_lib.Checkpoints(directory, keep=5)
  for step in (1, 2, 3):
    ckpt.save(step, {'w': tree['w'] * step, 'step': jnp.array(step)}, {'step': step})
  ckpt.close()
  # Step 3 loses its array data (a torn copy); step 4 never finished (orbax's temporary folder).
  for root, _, files in os.walk(os.path.join(directory, '3', 'state')):
    for name in files:
      if not name.startswith('_'):
        os.remove(os.path.join(root, name))
  os.makedirs(os.path.join(directory, '4.orbax-checkpoint-tmp-123'))
  with caplog.at_level(logging.WARNING):
    ckpt = ckpt_lib.Checkpoints(directory, keep=5)
    state, meta = ckpt.restore_latest(tree)
  ckpt.close()
  assert meta == {'step': 2} and int(state['step']) == 2
  np.testing.assert_array_equal(np.asarray(state['w']), np.arange(4.0) * 2)
  text = caplog.text
  assert 'incomplete checkpoint' in text and '4.orbax-checkpoint-tmp-123' in text
  assert 'step 3' in text and 'cannot be read' in text


def test_config_checks_name_the_key():
  config = tiny_config()
  config.input.image_size = (200, 256)
  with pytest.raises(ValueError, match=r'config.input.image_size=\(200, 256\)'):
    settings.finalize(config)
  config = tiny_config(low_res_steps=6)
  with pytest.raises(ValueError, match=r'config.train.low_res_steps=6 must be 0 \(off\) or '
                                       r'between 1 and config.train.total_steps - 1 = 5'):
    settings.finalize(config)
  config = tiny_config(low_res_steps=2, low_res_image_size=(100, 128))
  with pytest.raises(ValueError, match=r'config.train.low_res_image_size=\(100, 128\)'):
    settings.finalize(config)
  from spinenet_jax.data import datasets
  with pytest.raises(ValueError, match='global_batch_size=12 must be a positive multiple of 8'):
    datasets._per_process(12, 'config.train.global_batch_size')


def test_train_image_size_follows_the_low_res_phase():
  config = tiny_config(low_res_steps=3, low_res_image_size=(128, 128))
  config.input.image_size = (256, 384)
  sizes = [settings.train_image_size(config, step) for step in range(5)]
  assert sizes == [(128, 128)] * 3 + [(256, 384)] * 2
  assert settings.train_image_size(tiny_config(), 0) == (128, 128)   # off: the input size


def test_bfloat16_compute_trains_with_float32_parameters():
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  trainer = Trainer(settings.finalize(config), sharding.make_mesh(jax.devices()[:1]))
  state = trainer.new_state()
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))
  state, metrics = trainer.train_step(state, random_batch())
  assert np.isfinite(float(metrics['total_loss'])) and int(state.nonfinite_step) == -1
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))


def _sgd_config(clip_mode, clip_norm, group_size=4, norm_type='batch'):
  """Plain SGD at learning rate 1 (the update is minus the gradient), no momentum."""
  config = tiny_config(warmup_steps=0, init_learning_rate=1.0, learning_rate_steps=(),
                       learning_rate_levels=(), momentum=0.0, gradient_clip_norm=clip_norm,
                       gradient_clip_mode=clip_mode)
  config.loss.normalizer_group_size = group_size
  config.model.norm.type = norm_type
  return settings.finalize(config)


def _gradient(trainer, state, batch):
  new, metrics = trainer.train_step(jax.tree_util.tree_map(jnp.copy, state), batch)
  grads = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b),
                                 jax.device_get(state.params), jax.device_get(new.params))
  return grads, jax.device_get(new.batch_stats), jax.device_get(metrics)


@pytest.mark.parametrize('devices', [1, 8])
def test_per_replica_gradients_sum_to_the_batch_gradient_with_global_batch_norm(devices):
  # Unclipped, the replicas' gradients (each w.r.t. the parameters as its images use them, batch
  # norm statistics over all replicas: the official sync BN) sum to the batch gradient, and the
  # batch statistics are the global ones, on one device or eight (two images each).
  batch = random_batch(batch_size=16, seed=3)
  ref = Trainer(_sgd_config('global', 0.0, group_size=2), sharding.make_mesh(jax.devices()[:1]))
  state = ref.new_state()
  want, want_stats, want_metrics = _gradient(ref, state, batch)
  per_replica = Trainer(_sgd_config('per_replica', 1e9, group_size=2),
                        sharding.make_mesh(jax.devices()[:devices]))
  got, got_stats, metrics = _gradient(
      per_replica, jax.device_put(jax.device_get(state), per_replica.replicated), batch)
  assert_trees_close(got, want)
  assert_trees_close(got_stats, want_stats)
  np.testing.assert_allclose(metrics['total_loss'], want_metrics['total_loss'], rtol=1e-5)
  np.testing.assert_allclose(metrics['grad_norm'], want_metrics['grad_norm'], rtol=1e-4)
  assert metrics['clipped'] == 0.0


def test_per_replica_clipping_clips_each_group_before_the_sum():
  # With group norm nothing couples the images, so a replica's gradient is the gradient of its
  # own images' loss / replicas: clip each to norm 0.05 (all are larger), then sum.
  batch = random_batch(seed=4)
  trainer = Trainer(_sgd_config('per_replica', 0.05, norm_type='group'),
                    sharding.make_mesh(jax.devices()[:1]))
  state = trainer.new_state()
  got, _, metrics = _gradient(trainer, state, batch)
  detector, replicas = trainer.detector, 2

  def replica_loss(params, images):
    part = {k: v[images] for k, v in batch.items()}
    terms, _, _ = detector.loss({'params': params, 'batch_stats': state.batch_stats}, part,
                                {'dropout': jax.random.key(0), 'sampling': jax.random.key(1)})
    l2 = losses.l2_regularization(params, trainer.config.loss.l2_weight_decay)
    return (sum(terms.values()) + l2) / replicas

  want, norms = None, []
  for r in range(replicas):
    g = jax.grad(replica_loss)(state.params, slice(4 * r, 4 * r + 4))
    norm = float(optax.tree.norm(g))
    norms.append(norm)
    g = jax.tree_util.tree_map(lambda x: np.asarray(x) * 0.05 / max(norm, 0.05), g)
    want = g if want is None else jax.tree_util.tree_map(np.add, want, g)
  assert min(norms) > 0.05 and metrics['clipped'] == 1.0
  assert_trees_close(got, want)
  # Global clipping of the same batch is a different update.
  whole = jax.tree_util.tree_map(np.add, *[jax.grad(replica_loss)(
      state.params, slice(4 * r, 4 * r + 4)) for r in range(replicas)])
  scale = 0.05 / max(float(optax.tree.norm(whole)), 0.05)
  diff = max(float(np.abs(np.asarray(a) * scale - b).max()) for a, b in zip(
      jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(got)))
  assert diff > 1e-4


def test_per_replica_clipping_needs_whole_groups_per_device():
  trainer = Trainer(_sgd_config('per_replica', 10.0), sharding.make_mesh())
  with pytest.raises(ValueError, match='global batch 8 must be a multiple of 8 devices x '
                                       'config.loss.normalizer_group_size 4'):
    trainer.train_step(trainer.new_state(), random_batch())


def test_per_replica_clipping_needs_the_normalizer_groups():
  config = tiny_config(gradient_clip_mode='per_replica')
  config.loss.normalizer_group_size = None
  with pytest.raises(ValueError, match='config.loss.normalizer_group_size is None'):
    settings.finalize(config)
  with pytest.raises(ValueError, match="gradient_clip_mode must be one of"):
    settings.finalize(tiny_config(gradient_clip_mode='per_device'))


def test_checkpoints_that_all_fail_to_restore_stop_the_run(tmp_path):
  # Starting afresh would silently lose their work (and rotate them out): an error instead.
  directory = str(tmp_path / 'checkpoints')
  ckpt = ckpt_lib.Checkpoints(directory, keep=5)
  ckpt.save(1, {'w': jnp.arange(4.0)}, {'step': 1})
  ckpt.close()
  ckpt = ckpt_lib.Checkpoints(directory, keep=5)
  with pytest.raises(RuntimeError, match=r'None of the checkpoints in .* \(steps \[1\]\) can be '
                                         'restored'):
    ckpt.restore_latest({'w': jnp.arange(4.0), 'extra': jnp.zeros(2)})
  ckpt.close()


def test_optimizer_state_has_one_structure_whatever_the_clipping():
  shapes = []
  for norm, mode in ((10.0, 'global'), (0.0, 'global'), (10.0, 'per_replica')):
    from spinenet_jax.training.trainer import make_optimizer
    config = tiny_config(gradient_clip_norm=norm, gradient_clip_mode=mode)
    shapes.append(jax.tree_util.tree_structure(make_optimizer(config).init({'w': jnp.zeros(3)})))
  assert shapes[0] == shapes[1] == shapes[2]

"""Library pieces that replaced hand-written code give what the hand-written code gave.

Each test keeps the replaced formula verbatim as the reference: learning-rate schedules (optax
schedule pieces), the TF1 Huber loss (`optax.losses.huber_loss`) and drop-connect (`nn.Dropout`
broadcast over all axes but the batch). The synthetic masks (pycocotools RLE) are checked in
tests/test_synthetic.py.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax import losses
from spinenet_jax.modeling import layers
from spinenet_jax.training import optimizer as opt_lib

# Schedules


def _old_step_schedule(init_lr, warmup_steps, warmup_lr, steps, levels):
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = jnp.asarray(init_lr, jnp.float32)
    for boundary, level in zip(steps, levels):
      lr = jnp.where(step >= boundary, level, lr)
    if warmup_steps > 0:
      warm = warmup_lr + step / warmup_steps * (init_lr - warmup_lr)
      lr = jnp.where(step < warmup_steps, warm, lr)
    return lr
  return schedule


def _old_cosine_schedule(init_lr, warmup_steps, warmup_lr, total_steps):
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    lr = init_lr * 0.5 * (jnp.cos(math.pi * progress) + 1.0)
    if warmup_steps > 0:
      warm = warmup_lr + step / warmup_steps * (init_lr - warmup_lr)
      lr = jnp.where(step < warmup_steps, warm, lr)
    return lr
  return schedule


STEP_CASES = [
    (0.28, 2000, 0.0067, (217610, 226870), (0.028, 0.0028)),   # official RetinaNet (base.py)
    (0.12, 100, 0.0067, (1420, 1540), (0.012, 0.0012)),        # configs/demo.py
    (0.28, 2000, 0.0067, (148160, 157420), (0.028, 0.0028)),   # Mask R-CNN protocol
    (0.1, 0, 0.0, (10, 20), (0.01, 0.001)),                    # no warmup
    (0.1, 5, 0.02, (), ()),                                    # no decay
    (0.3, 7, 0.001, (5, 9, 9), (0.2, 0.1, 0.05)),              # decay inside the warmup, a tie
]
COSINE_CASES = [
    (0.28, 2000, 0.0067, 231500),
    (0.1, 10, 0.0, 110),
    (1.6, 1564, 0.0, 62557),    # the classification protocol of the reference
    (0.12, 0, 0.0, 1600),
    (0.12, 10, 0.01, 5),        # total <= warmup: one step of decay, as before
]


def _boundaries(*points):
  return sorted({s + d for p in points for s in p for d in (-1, 0, 1) if s + d >= 0})


def _assert_same(new, old, steps):
  """Bit for bit, in each way a schedule is called: XLA itself rounds `step / warmup_steps` one
  ulp apart between eager, jitted and scalar calls (it may multiply by the reciprocal), so the old
  formula is called the same way as the new one."""
  steps = jnp.asarray(np.asarray(steps, np.int32))
  calls = {'eager': lambda f: f(steps), 'jit': lambda f: jax.jit(f)(steps),
           'python ints': lambda f: np.array([f(int(s)) for s in steps[:300]])}
  for name, call in calls.items():
    got, expected = np.asarray(call(new)), np.asarray(call(old))
    assert got.dtype == np.float32, name
    np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize('args', STEP_CASES)
def test_step_schedule_equals_the_official_formula_bit_for_bit(args):
  init_lr, warmup_steps, _, steps, _ = args
  points = _boundaries([0, warmup_steps], steps, [steps[-1] + 1000 if steps else 1000])
  _assert_same(opt_lib.step_schedule(*args), _old_step_schedule(*args), points)
  # And at every step of the short schedules.
  if not steps or steps[-1] < 2000:
    _assert_same(opt_lib.step_schedule(*args), _old_step_schedule(*args),
                 np.arange((steps[-1] if steps else warmup_steps) + 50))


@pytest.mark.parametrize('args', COSINE_CASES)
def test_cosine_schedule_equals_the_old_formula_bit_for_bit(args):
  _, warmup_steps, _, total_steps = args
  points = _boundaries([0, warmup_steps, total_steps, total_steps + 100],
                       [(warmup_steps + total_steps) // 2])
  _assert_same(opt_lib.cosine_schedule(*args), _old_cosine_schedule(*args), points)
  _assert_same(opt_lib.cosine_schedule(*args), _old_cosine_schedule(*args),
               np.arange(total_steps + 10) if total_steps < 2000 else
               np.linspace(0, total_steps + 10, 4001).astype(int))


def test_schedule_errors_are_unchanged():
  with pytest.raises(ValueError, match=r'learning_rate_steps \[10, 20\] and learning_rate_levels '
                     r'\[0.01\] must have the same length.'):
    opt_lib.step_schedule(0.1, 0, 0.0, (10, 20), (0.01,))
  with pytest.raises(ValueError, match=r'learning_rate_steps must increase, got \[20, 10\].'):
    opt_lib.step_schedule(0.1, 0, 0.0, (20, 10), (0.01, 0.001))
  with pytest.raises(ValueError, match='warmup_steps must be >= 0, got -1'):
    opt_lib.cosine_schedule(0.1, -1, 0.0, 100)


# Huber


def _old_huber(targets, outputs, delta):
  err = jnp.abs(outputs.astype(jnp.float32) - targets)
  quadratic = jnp.minimum(err, delta)
  return 0.5 * quadratic**2 + delta * (err - quadratic)


def test_huber_is_optax_with_the_tf1_formula():
  delta = 0.1
  # Inside, exactly at, and outside delta, both signs, and a float32 delta that is not exact.
  errors = np.array([0.0, 0.03, -0.05, 0.0999, 0.1, -0.1, np.float32(0.1), 0.1001, 0.3, -2.5, 40.0],
                    np.float32)
  for targets in (np.zeros_like(errors), np.linspace(-1, 1, errors.size).astype(np.float32)):
    outputs = targets + errors
    got = np.asarray(losses.huber_loss(jnp.asarray(targets), jnp.asarray(outputs), delta))
    np.testing.assert_array_equal(got, np.asarray(_old_huber(jnp.asarray(targets),
                                                             jnp.asarray(outputs), delta)))
    # TF1 `tf.losses.huber_loss` elementwise: 0.5 x^2 inside, delta (|x| - delta / 2) outside, no
    # division by delta (a smooth-L1 would be 10x larger inside at delta = 0.1).
    x = np.abs(outputs.astype(np.float64) - targets)
    tf1 = np.where(x <= delta, 0.5 * x**2, delta * (x - 0.5 * delta))
    np.testing.assert_allclose(got, tf1, rtol=2e-6, atol=1e-9)
  np.testing.assert_allclose(losses.huber_loss(jnp.zeros(3), jnp.array([0.05, 0.1, -0.3]), delta),
                             [0.00125, 0.005, 0.025], rtol=1e-6)
  # The same operations on the same data flow (optax only orders two independent ones differently):
  # bit-equal compiled, too, as in the train step.
  t, o = jax.random.normal(jax.random.key(0), (2, 4096)) * 0.2
  new = jax.jit(lambda t, o: losses.huber_loss(t, o, delta))
  np.testing.assert_array_equal(new(t, o), jax.jit(lambda t, o: _old_huber(t, o, delta))(t, o))
  # Argument order: ours is (targets, outputs); optax's is (predictions, targets). Symmetric in
  # value, so check the call does not swap the cast: bfloat16 outputs are promoted to float32.
  bf = losses.huber_loss(jnp.zeros(3), jnp.ones(3, jnp.bfloat16), delta)
  assert bf.dtype == jnp.float32


# Drop-connect


def _old_drop_connect(x, rate, rng):
  keep = 1.0 - rate
  noise = jax.random.uniform(rng, (x.shape[0],) + (1,) * (x.ndim - 1), dtype=jnp.float32)
  mask = jnp.floor(keep + noise).astype(x.dtype)
  return x / jnp.asarray(keep, x.dtype) * mask


@pytest.mark.parametrize('rate', [0.1, 0.25, 0.5])
def test_drop_connect_keeps_or_drops_whole_samples(rate):
  keep = 1.0 - rate
  n = 4096
  x = jax.random.normal(jax.random.key(7), (n, 3, 2, 4))
  out = np.asarray(layers.drop_connect(x, rate, jax.random.key(1)))
  rescaled = np.asarray(x / keep)   # XLA's float32 division (numpy's rounds differently)
  x = np.asarray(x)
  kept = np.all(out == rescaled, axis=(1, 2, 3))
  dropped = np.all(out == 0, axis=(1, 2, 3))
  assert np.all(kept ^ dropped)              # each sample: all of x / keep, or all zero
  # One Bernoulli(keep) draw per sample: the kept fraction is keep within 4 standard deviations,
  # as with the official floor(keep + U[0, 1)) mask.
  sigma = math.sqrt(keep * rate / n)
  assert abs(kept.mean() - keep) < 4 * sigma
  old = np.asarray(_old_drop_connect(jnp.asarray(x), rate, jax.random.key(1)))
  old_kept = np.all(old != 0, axis=(1, 2, 3))
  assert abs(old_kept.mean() - keep) < 4 * sigma
  # Same values on the samples both keep.
  both = kept & old_kept
  np.testing.assert_array_equal(out[both], old[both])


def test_drop_connect_is_flax_dropout_over_non_batch_axes():
  x = jax.random.normal(jax.random.key(0), (64, 5, 4, 3), jnp.bfloat16)
  rng = jax.random.key(3)
  got = layers.drop_connect(x, 0.2, rng)
  ref = nn.Dropout(0.2, broadcast_dims=(1, 2, 3), deterministic=False).apply({}, x, rng=rng)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(ref, np.float32))
  # Deterministic for a key, different across keys.
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(layers.drop_connect(x, 0.2, rng), np.float32))
  assert not np.array_equal(np.asarray(got, np.float32),
                            np.asarray(layers.drop_connect(x, 0.2, jax.random.key(4)), np.float32))


def test_drop_connect_inside_a_module_under_jit():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.drop_connect(nn.Dense(4)(x), 0.5, self.make_rng('dropout'))

  x = jnp.ones((32, 2, 2, 4))
  variables = Block().init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x)
  assert set(variables) == {'params'} and set(variables['params']) == {'Dense_0'}
  out = jax.jit(lambda v, k: Block().apply(v, x, rngs={'dropout': k}))(variables, jax.random.key(2))
  per_sample = np.asarray(out).reshape(32, -1)
  dense = np.asarray(nn.Dense(4).apply({'params': variables['params']['Dense_0']}, x))
  kept = np.any(per_sample != 0, axis=1)
  assert 0 < kept.sum() < 32
  np.testing.assert_allclose(per_sample[kept], dense.reshape(32, -1)[kept] * 2, rtol=1e-6)
  assert np.all(per_sample[~kept] == 0)

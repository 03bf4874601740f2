"""The official optimizer: SGD momentum 0.9, linear warmup, step (or cosine) decay, clipping.

`tf.train.MomentumOptimizer(lr, 0.9)` keeps accum = 0.9 accum + g and applies w -= lr accum, which
is `optax.sgd(lr, momentum=0.9)`. L2 is not here: it is part of the loss (`losses.l2_regularization`),
so it passes through clipping and momentum as in the official code.

Clipping: the official `CrossShardOptimizer` clips each replica's gradient of (replica loss /
num_shards) to global norm 10 *before* the cross-replica sum. Here the gradient of the whole batch's
loss is clipped once (`optax.clip_by_global_norm`). The two agree whenever no clipping happens; with
32 replicas each replica's share is ~1/32 of the total, so the official per-replica clip only acts
on gradients whose total norm is far above 10 (up to 32x), while the global clip acts at 10. In
practice the clip guards the warmup's first steps; see docs/design.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def step_schedule(init_lr: float, warmup_steps: int, warmup_lr: float,
                  steps: Sequence[int], levels: Sequence[float]) -> Schedule:
  """Official `step_learning_rate_with_linear_warmup`: linear warmup from `warmup_lr`, then
  `init_lr`, dropping to `levels[k]` once step >= `steps[k]`."""
  if len(steps) != len(levels):
    raise ValueError(f'learning_rate_steps {list(steps)} and learning_rate_levels {list(levels)} '
                     'must have the same length.')
  if list(steps) != sorted(steps):
    raise ValueError(f'learning_rate_steps must increase, got {list(steps)}.')

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


def cosine_schedule(init_lr: float, warmup_steps: int, warmup_lr: float,
                    total_steps: int) -> Schedule:
  """Linear warmup, then init_lr (cos(pi (step - warmup) / (total - warmup)) + 1) / 2."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    lr = init_lr * 0.5 * (jnp.cos(math.pi * progress) + 1.0)
    if warmup_steps > 0:
      warm = warmup_lr + step / warmup_steps * (init_lr - warmup_lr)
      lr = jnp.where(step < warmup_steps, warm, lr)
    return lr
  return schedule


def learning_rate_schedule(train_config) -> Schedule:
  """The schedule of `config.train` (`schedule` is 'step' or 'cosine')."""
  c = train_config
  if c.schedule == 'step':
    return step_schedule(c.init_learning_rate, c.warmup_steps, c.warmup_learning_rate,
                         tuple(c.learning_rate_steps), tuple(c.learning_rate_levels))
  if c.schedule == 'cosine':
    return cosine_schedule(c.init_learning_rate, c.warmup_steps, c.warmup_learning_rate,
                           c.total_steps)
  raise ValueError(f"config.train.schedule must be 'step' or 'cosine', got {c.schedule!r}.")


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Clip (if `gradient_clip_norm` > 0) then SGD with momentum on the configured schedule."""
  parts = []
  if train_config.gradient_clip_norm and train_config.gradient_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train_config.gradient_clip_norm))
  parts.append(optax.sgd(learning_rate_schedule(train_config), momentum=train_config.momentum))
  return optax.chain(*parts)

"""The official optimizer: SGD momentum 0.9, linear warmup, step (or cosine) decay, clipping.

`tf.train.MomentumOptimizer(lr, 0.9)` keeps accum = 0.9 accum + g and applies w -= lr accum, which
is `optax.sgd(lr, momentum=0.9)`. L2 is not here: it is part of the loss
(`losses.l2_regularization`), so it passes through clipping and momentum as in the official code.

Clipping: `make_optimizer` clips the gradient of the whole batch once (`optax.clip_by_global_norm`),
`config.train.gradient_clip_mode='global'`. The official per-replica clip (the default,
'per_replica') happens in the train step instead (`train_step.py`), and the trainer then builds
this optimizer without clipping; see docs/design.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _linear_warmup(init_lr: float, warmup_steps: int, warmup_lr: float) -> Schedule:
  """The official float32 `warmup_lr + step / warmup_steps * (init_lr - warmup_lr)`.

  Not `optax.linear_schedule`: it evaluates (warmup_lr - init_lr) (1 - step / warmup_steps) +
  init_lr, the same line rounded differently (on the official warmup, lr(0) would be 0.006700009,
  20 ulps above 0.0067, and other steps up to 43 ulps off).
  """
  return lambda step: warmup_lr + jnp.asarray(step, jnp.float32) / warmup_steps * (
      init_lr - warmup_lr)


def _with_warmup(schedule: optax.Schedule, init_lr: float, warmup_steps: int,
                 warmup_lr: float) -> Schedule:
  """`schedule` from `warmup_steps` on (it sees step - warmup_steps), after a linear warmup from
  `warmup_lr` to `init_lr`; a float32 array at every step, as `optax.sgd` records it."""
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
  if warmup_steps > 0:
    warmup = _linear_warmup(init_lr, warmup_steps, warmup_lr)
    schedule = optax.join_schedules([warmup, schedule], [warmup_steps])
  return lambda step: jnp.asarray(schedule(step), jnp.float32)


def step_schedule(init_lr: float, warmup_steps: int, warmup_lr: float,
                  steps: Sequence[int], levels: Sequence[float]) -> Schedule:
  """Official `step_learning_rate_with_linear_warmup`: linear warmup from `warmup_lr`, then
  `init_lr`, dropping to `levels[k]` once step >= `steps[k]`."""
  if len(steps) != len(levels):
    raise ValueError(f'learning_rate_steps {list(steps)} and learning_rate_levels {list(levels)} '
                     'must have the same length.')
  if list(steps) != sorted(steps):
    raise ValueError(f'learning_rate_steps must increase, got {list(steps)}.')
  # After the warmup the schedule sees step - warmup_steps, so the boundaries are shifted by it.
  constant = optax.join_schedules(
      [optax.constant_schedule(v) for v in (init_lr, *levels)], [s - warmup_steps for s in steps])
  return _with_warmup(constant, init_lr, warmup_steps, warmup_lr)


def cosine_schedule(init_lr: float, warmup_steps: int, warmup_lr: float,
                    total_steps: int) -> Schedule:
  """Linear warmup, then init_lr (cos(pi (step - warmup) / (total - warmup)) + 1) / 2."""
  # optax's cosine over a unit decay, of progress = steps since warmup / decay steps rounded as
  # the official code rounds it (optax's own pi * count / decay_steps differs by up to 2 ulps of
  # init_lr).
  decay_steps = max(total_steps - warmup_steps, 1)
  cosine = optax.cosine_decay_schedule(init_lr, decay_steps=1)

  def decay(step):
    return cosine(jnp.asarray(step, jnp.float32) / decay_steps)

  return _with_warmup(decay, init_lr, warmup_steps, warmup_lr)


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
  """Clip (if `gradient_clip_norm` > 0, else identity) then SGD with momentum on the configured
  schedule. The clip slot is always there, so the optimizer state has one structure whatever the
  clipping settings, and checkpoints restore across them."""
  norm = train_config.gradient_clip_norm
  clip = optax.clip_by_global_norm(norm) if norm and norm > 0 else optax.identity()
  return optax.chain(clip, optax.sgd(learning_rate_schedule(train_config),
                                     momentum=train_config.momentum))

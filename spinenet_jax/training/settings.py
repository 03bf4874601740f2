"""Config checks and the smoke switch, applied once before a run.

`config.smoke = True` shrinks any config to a run of a few minutes on a CPU: the same model family
at a quarter of its filters and one block repeat, 256x256 inputs, the embedded synthetic dataset,
a handful of steps. Everything else (the recipe, the code paths) stays as configured.
"""

from __future__ import annotations

import logging

import ml_collections

log = logging.getLogger(__name__)


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` sized for a local smoke run (see the module docstring)."""
  config = ml_collections.ConfigDict(config.to_dict())
  b = config.model.backbone
  b.filter_size_scale = 0.25 * (b.filter_size_scale or _default_scale(b.model_id))
  b.block_repeats = 1
  b.endpoints_num_filters = 64
  config.model.head.num_filters = min(config.model.head.num_filters, 32)
  config.model.head.num_convs = min(config.model.head.num_convs, 2)
  config.input.image_size = (256, 256)
  config.data.source = 'synthetic'
  config.eval.annotation_file = None
  config.eval.num_images = 16
  config.eval.batch_size = 8
  t = config.train
  t.global_batch_size = 8
  old_total = t.total_steps
  t.total_steps = 6
  t.warmup_steps = 2
  t.learning_rate_steps = [max(1, round(s * 6 / old_total)) for s in t.learning_rate_steps]
  t.init_learning_rate = min(t.init_learning_rate, 0.02)
  t.log_every_steps = 2
  t.checkpoint_every_steps = 3
  t.eval_every_steps = 0
  config.smoke = False
  return config


def _default_scale(model_id: str) -> float:
  from spinenet_jax.modeling.block_specs import scaling_for
  return scaling_for(model_id).filter_size_scale


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Applies the smoke switch and checks settings that would otherwise fail deep in the run."""
  if config.get('smoke'):
    log.warning('config.smoke=True: shrinking the config for a local smoke run.')
    config = shrink(config)
  size = tuple(config.input.image_size)
  stride = 2 ** config.model.backbone.max_level
  if len(size) != 2 or any(s <= 0 or s % stride for s in size):
    raise ValueError(f'config.input.image_size={size} must be two positive multiples of '
                     f'2^max_level = {stride} (the official code pads to them).')
  t = config.train
  if t.total_steps <= 0:
    raise ValueError(f'config.train.total_steps must be positive, got {t.total_steps}.')
  for key in ('log_every_steps', 'checkpoint_every_steps'):
    if t[key] <= 0:
      raise ValueError(f'config.train.{key} must be positive, got {t[key]}.')
  return config

"""Config checks and the smoke switch, applied once before a run.

`config.smoke = True` shrinks any config to a run of a few minutes on a CPU: the same model family
at a quarter of its filters and one block repeat, 256x256 inputs, a handful of steps, on the
embedded synthetic dataset (or on the configured COCO folder, `data.source='coco_folder'`, so a
user's own dataset can be tried end to end in minutes). Everything else (the recipe, the code
paths) stays as configured.
"""

from __future__ import annotations

import logging

import jax
import ml_collections

from spinenet_jax.evaluation import coco_backends

log = logging.getLogger(__name__)


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` sized for a local smoke run (see the module docstring)."""
  config = ml_collections.ConfigDict(config.to_dict())
  b = config.model.backbone
  b.filter_size_scale = 0.25 * (b.filter_size_scale or _default_scale(b.model_id))
  b.block_repeats = 1
  b.endpoints_num_filters = 64
  for name in ('head', 'rpn_head', 'frcnn_head', 'mask_head'):   # RetinaNet's, Mask R-CNN's
    if name in config.model:
      head = config.model[name]
      head.num_filters = min(head.num_filters, 32)
      head.num_convs = min(head.num_convs, 2)
  if 'frcnn_head' in config.model:
    config.model.frcnn_head.fc_dims = min(config.model.frcnn_head.fc_dims, 128)
  config.input.image_size = (256, 256)
  if config.data.source != 'coco_folder':   # a user's own folder is kept: try it in minutes
    config.data.source = 'synthetic'
    config.data.train_split, config.data.eval_split = 'train', 'val'   # the synthetic splits
    config.eval.annotation_file = None
  config.eval.num_images = 16
  config.eval.batch_size = 8
  t = config.train
  t.global_batch_size = 8
  old_total = t.total_steps
  t.total_steps = 6
  t.warmup_steps = 2
  t.learning_rate_steps = [max(1, round(s * 6 / old_total)) for s in t.learning_rate_steps]
  lr = min(t.init_learning_rate, 0.02)
  # The decayed levels shrink with the initial rate (they would otherwise rise above it).
  t.learning_rate_levels = [v * lr / t.init_learning_rate for v in t.learning_rate_levels]
  t.init_learning_rate = lr
  t.log_every_steps = 2
  t.checkpoint_every_steps = 3
  t.eval_every_steps = 0
  t.low_res_steps = 0
  if t.gradient_clip_mode == 'per_replica' and config.loss.get('normalizer_group_size'):
    # Whole replica groups on every device of this machine (the official groups are 8 images).
    devices = jax.device_count()
    if t.global_batch_size % devices == 0:
      config.loss.normalizer_group_size = min(config.loss.normalizer_group_size,
                                              t.global_batch_size // devices)
    else:
      t.gradient_clip_mode = 'global'
  config.smoke = False
  return config


def _default_scale(model_id: str) -> float:
  from spinenet_jax.modeling.block_specs import scaling_for
  return scaling_for(model_id).filter_size_scale


def _check_size(key: str, size, config) -> None:
  size = tuple(size)
  stride = 2 ** config.model.backbone.max_level
  if len(size) != 2 or any(s <= 0 or s % stride for s in size):
    raise ValueError(f'{key}={size} must be two positive multiples of 2^max_level = {stride} '
                     '(the official code pads to them).')


def train_image_size(config, step: int) -> tuple[int, int]:
  """The input size that training step `step` (0-based) uses."""
  t = config.train
  return tuple(t.low_res_image_size if step < t.low_res_steps else config.input.image_size)


def phases(config) -> list[tuple[int, int, tuple[int, int]]]:
  """[(first step, end step, input size)] of the run: one phase, or two with progressive
  resizing."""
  t = config.train
  full = tuple(config.input.image_size)
  if not t.low_res_steps:
    return [(0, t.total_steps, full)]
  return [(0, t.low_res_steps, tuple(t.low_res_image_size)), (t.low_res_steps, t.total_steps, full)]


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Applies the smoke switch and checks settings that would otherwise fail deep in the run."""
  if config.get('smoke'):
    log.warning('config.smoke=True: shrinking the config for a local smoke run.')
    config = shrink(config)
  _check_size('config.input.image_size', config.input.image_size, config)
  t = config.train
  if t.total_steps <= 0:
    raise ValueError(f'config.train.total_steps must be positive, got {t.total_steps}.')
  if t.low_res_steps:
    if not 0 < t.low_res_steps < t.total_steps:
      raise ValueError(f'config.train.low_res_steps={t.low_res_steps} must be 0 (off) or between '
                       f'1 and config.train.total_steps - 1 = {t.total_steps - 1}.')
    _check_size('config.train.low_res_image_size', t.low_res_image_size, config)
  modes = ('per_replica', 'global')
  if t.gradient_clip_mode not in modes:
    raise ValueError(f'config.train.gradient_clip_mode must be one of {modes}, got '
                     f'{t.gradient_clip_mode!r}.')
  if t.gradient_clip_mode == 'per_replica' and t.gradient_clip_norm and \
      not config.loss.get('normalizer_group_size'):
    raise ValueError("config.train.gradient_clip_mode='per_replica' clips the replica groups of "
                     'the loss normalizer, but config.loss.normalizer_group_size is None: set it '
                     "(official: 8) or use config.train.gradient_clip_mode='global'.")
  for key in ('log_every_steps', 'checkpoint_every_steps'):
    if t[key] <= 0:
      raise ValueError(f'config.train.{key} must be positive, got {t[key]}.')
  backend = config.eval.get('coco_backend', 'hotcoco')
  try:    # now, not at the first evaluation after hours of training
    coco_backends.check_backend(backend)
  except ValueError as e:
    raise ValueError(f'config.eval.coco_backend={backend!r}: {e}') from None
  return config

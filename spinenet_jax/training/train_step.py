"""Train state, the train step (labels made on the device) and the predict step.

The train step is one `jax.jit` program: anchor labelling, forward, losses, L2, gradient, clipping
and the SGD update, so the host only feeds padded ground truth. A non-finite loss does not touch the
state: the update is skipped and the step is recorded in `nonfinite_step`, which the loop checks at
its logging points (no host round trip per step) before it stops with that step number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spinenet_jax import losses
from spinenet_jax.modeling.retinanet import RetinaNet
from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import postprocess, target_assigner


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # int32 []: optimizer steps taken (= batches consumed)
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array               # uint32 [2]: raw base key; step keys are fold_in(rng, step)
  nonfinite_step: jax.Array    # int32 []: first step with a non-finite loss, -1 if none


def init_state(model: RetinaNet, tx: optax.GradientTransformation, image_size: tuple[int, int],
               seed: int) -> TrainState:
  """A fresh state (call under `jax.jit` with out_shardings to create it on the devices)."""
  init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.zeros((1, *image_size, 3), jnp.float32))
  params = variables['params']
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                    rng=state_key, nonfinite_step=jnp.full([], -1, jnp.int32))


def level_anchors(model: RetinaNet, image_size: tuple[int, int]) -> tuple[np.ndarray, dict]:
  """Anchors [N, 4] and per level {L: [H, W, A*4]} for the (padded) input size, as numpy arrays:
  the jitted steps embed them as constants (host-local, so also right on many hosts)."""
  config = model.config.anchors
  boxes = anchor_ops.generate_anchors(config, image_size)
  return boxes, anchor_ops.unpack_levels(boxes, config, image_size)


def make_train_step(model: RetinaNet, tx: optax.GradientTransformation,
                    loss_config: losses.LossConfig, image_size: tuple[int, int]
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """(state, batch) -> (state, metrics); batch holds 'images', 'gt_boxes', 'gt_classes'."""
  boxes, per_level = level_anchors(model, image_size)
  anchor_config = model.config.anchors

  def loss_fn(params, state: TrainState, batch: dict, rng):
    out, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                               batch['images'], train=True, mutable=['batch_stats'],
                               rngs={'dropout': rng})
    labels = target_assigner.label_batch(boxes, batch['gt_boxes'],
                                         batch['gt_classes'])
    cls_targets = anchor_ops.unpack_levels(labels.cls_targets[..., None], anchor_config,
                                           image_size)
    box_targets = anchor_ops.unpack_levels(labels.box_targets, anchor_config, image_size)
    terms = losses.retinanet_loss(out['cls_outputs'], out['box_outputs'], cls_targets,
                                  box_targets, labels.num_positives, loss_config, per_level)
    l2 = losses.l2_regularization(params, loss_config.l2_weight_decay)
    total = terms['model_loss'] + l2
    aux = dict(terms, l2_loss=l2, total_loss=total,
               num_positives=jnp.mean(labels.num_positives))
    return total, (aux, updates['batch_stats'])

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    (total, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_step=jnp.where(~finite & (state.nonfinite_step < 0), state.step,
                                 state.nonfinite_step))
    metrics = dict(metrics, grad_norm=grad_norm)
    return new_state, metrics

  return train_step


def make_predict_step(model: RetinaNet, detection_config: postprocess.DetectionConfig,
                      image_size: tuple[int, int]) -> Callable[[dict, dict], dict]:
  """(variables, batch) -> detections in output-canvas pixels plus the batch's image_info."""
  _, per_level = level_anchors(model, image_size)
  num_classes = model.config.head.num_classes

  def predict_step(variables: dict, batch: dict) -> dict:
    out = model.apply(variables, batch['images'], train=False)
    canvas = batch['image_info'][:, 1, :]          # output size, as the official generator clips
    return postprocess.generate_detections(
        out['cls_outputs'], out['box_outputs'], per_level, canvas, num_classes, detection_config)

  return predict_step

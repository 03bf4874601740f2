"""Train state and the train step, for any detector (`spinenet_jax.detectors.base.Detector`).

The train step is one `jax.jit` program: the detector's loss on the whole batch (its targets are
made on the device from padded ground truth), L2, the gradient, clipping, the SGD update and the
batch-norm statistics, so the host only feeds batches. A non-finite loss does not touch the
state: the update is skipped and the step is recorded in `nonfinite_step`, which the loop checks
at its logging points (no host round trip per step) before it stops with that step number.

Gradient clipping (`tf.clip_by_global_norm`, norm `clip_norm`):
  'per_replica'  the official recipe. `CrossShardOptimizer` clips each replica's gradient of
                 (replica loss / replicas) before the cross-replica sum. A replica here is a group
                 of `group_size` images (the loss normalizer's groups), so the result does not
                 depend on the device count. Batch norm stays global, as the official sync BN
                 (the groups are a vmapped axis its statistics average over), and a replica's
                 gradient is that of the total loss w.r.t. the parameters *as used by that
                 replica's images*: the TPU semantics of a cross-replica sum's gradient.
  'global'       one clip of the whole batch's gradient (the optimizer's `clip_by_global_norm`).

The per-replica gradients come from one forward and backward pass: on each device (`shard_map`)
the parameters are broadcast to one copy per local group and the groups are vmapped, so each
copy's gradient is its group's. Each device must hold whole groups (global batch a multiple of
devices x group size). Tested against the batch gradient (the groups' gradients sum to it, on one
device and on eight) and against clipping each group's own gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from spinenet_jax import losses
from spinenet_jax.detectors.base import Detector
from spinenet_jax.modeling import layers

CLIP_MODES = ('per_replica', 'global')
REPLICA_AXIS = 'replicas'
DATA_AXIS = 'data'           # the mesh axis batches are sharded over
# Random streams folded into the state's key: dropout keeps the key it had before streams existed
# (fold_in(rng, step)); the sampling stream folds in a number no int32 step reaches first.
SAMPLING_STREAM = 2**32 - 1


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # int32 []: optimizer steps taken (= batches consumed)
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array               # uint32 [2]: raw base key; step keys are fold_in(rng, step)
  nonfinite_step: jax.Array    # int32 []: first step with a non-finite loss, -1 if none


def init_state(detector: Detector, tx: optax.GradientTransformation, image_size: tuple[int, int],
               seed: int) -> TrainState:
  """A fresh state (call under `jax.jit` with out_shardings to create it on the devices)."""
  init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = detector.init(init_key, image_size)
  params = variables['params']
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables['batch_stats'], opt_state=tx.init(params),
                    rng=state_key, nonfinite_step=jnp.full([], -1, jnp.int32))


def step_rngs(state: TrainState) -> dict[str, jax.Array]:
  """{'dropout', 'sampling'} keys of this step: independent streams, new every step."""
  return {'dropout': jax.random.fold_in(state.rng, state.step),
          'sampling': jax.random.fold_in(jax.random.fold_in(state.rng, SAMPLING_STREAM),
                                         state.step)}


def _clip(tree: Any, norm: jax.Array, clip_norm: float) -> Any:
  """`tf.clip_by_global_norm`: t * clip_norm / max(norm, clip_norm)."""
  scale = clip_norm / jnp.maximum(norm, clip_norm)
  return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), tree)


def make_train_step(detector: Detector, tx: optax.GradientTransformation,
                    l2_weight_decay: float, clip_norm: float = 0.0, clip_mode: str = 'global',
                    group_size: int | None = None, mesh: Mesh | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """(state, batch) -> (state, metrics) for `detector`.

  `tx` is the optimizer; with clip_mode 'global' it does the clipping itself (clip_norm here is
  used for the logged 'clipped' fraction only); with 'per_replica' the step clips each group of
  `group_size` images before summing (each device holding whole groups of the batch sharded
  over `mesh`'s 'data' axis) and `tx` must not clip again. Metrics: the detector's loss
  terms and metrics, 'model_loss' (their sum), 'l2_loss', 'total_loss', 'grad_norm' (global: the
  batch gradient before clipping; per replica: the applied sum of clipped replica gradients, plus
  'replica_grad_norm', the mean of the replicas' norms before clipping) and 'clipped' (fraction of
  replicas, or 1/0, that were clipped).
  """
  if clip_mode not in CLIP_MODES:
    raise ValueError(f'config.train.gradient_clip_mode must be one of {CLIP_MODES}, '
                     f'got {clip_mode!r}.')
  per_replica = clip_mode == 'per_replica' and clip_norm > 0
  if per_replica and mesh is None:
    raise ValueError("gradient_clip_mode='per_replica' needs the device mesh.")
  if per_replica and not group_size:
    raise ValueError("config.train.gradient_clip_mode='per_replica' clips the replica groups of "
                     'the loss normalizer: set config.loss.normalizer_group_size, or use '
                     "gradient_clip_mode='global'.")

  def loss_fn(params, batch_stats, batch: dict, rngs):
    terms, metrics, new_stats = detector.loss({'params': params, 'batch_stats': batch_stats},
                                              batch, rngs)
    model_loss = sum(terms[k] for k in sorted(terms))
    l2 = losses.l2_regularization(params, l2_weight_decay)
    total = model_loss + l2
    aux = dict(terms, **metrics, model_loss=model_loss, l2_loss=l2, total_loss=total)
    return total, (aux, new_stats)

  def global_grads(state: TrainState, batch: dict):
    (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, step_rngs(state))
    norm = optax.tree.norm(grads)
    clipped = (norm > clip_norm).astype(jnp.float32) if clip_norm > 0 else jnp.zeros([])
    return grads, metrics, batch_stats, norm, clipped

  def per_replica_grads(state: TrainState, batch: dict):
    devices = mesh.shape[DATA_AXIS]
    b = batch['images'].shape[0]
    if b % (devices * group_size):
      raise ValueError(
          f"config.train.gradient_clip_mode='per_replica' needs whole replica groups on every "
          f'device: the global batch {b} must be a multiple of {devices} devices x '
          f'config.loss.normalizer_group_size {group_size}.')
    num_replicas = b // group_size

    def local(params, batch_stats, part: dict, keys: dict):
      # One device's share of the batch: its replica groups, vmapped. Batch norm averages over
      # the groups and the devices (global statistics). Without check_vma the transpose of that
      # cross-device mean is a sum of cotangents, the TPU semantics: each group's gradient is the
      # total loss's gradient w.r.t. the parameters as the group's images use them.
      replicas = part['images'].shape[0] // group_size
      groups = jax.tree_util.tree_map(
          lambda x: x.reshape(replicas, group_size, *x.shape[1:]), part)
      ids = jax.lax.axis_index(DATA_AXIS) * replicas + jnp.arange(replicas)
      rngs = {k: jax.vmap(lambda i, key=key: jax.random.fold_in(key, i))(ids)
              for k, key in keys.items()}

      def replica_loss(p, group, group_rngs):
        total, (metrics, stats) = loss_fn(p, batch_stats, group, group_rngs)
        return total / num_replicas, (metrics, stats)

      def local_total(stacked):
        with layers.batch_norm_axis((DATA_AXIS, REPLICA_AXIS)):
          totals, aux = jax.vmap(replica_loss, axis_name=REPLICA_AXIS)(stacked, groups, rngs)
        return jnp.sum(totals), aux

      stacked = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p, (replicas, *p.shape)),
                                       params)
      (_, (metrics, stats)), grads = jax.value_and_grad(local_total, has_aux=True)(stacked)
      norms = jax.vmap(optax.tree.norm)(grads)                               # [replicas]
      clipped = jax.vmap(lambda g, n: _clip(g, n, clip_norm))(grads, norms)
      # One all-reduce of one gradient: the sum of the clipped replica gradients.
      applied = jax.tree_util.tree_map(
          lambda g: jax.lax.psum(jnp.sum(g, axis=0), DATA_AXIS), clipped)
      mean = lambda x: jax.lax.pmean(jnp.mean(x), DATA_AXIS)  # noqa: E731
      metrics = dict(jax.tree_util.tree_map(mean, metrics), replica_grad_norm=mean(norms))
      # Batch statistics are synchronized over groups and devices: every copy is the same.
      return (applied, metrics, jax.tree_util.tree_map(lambda s: s[0], stats),
              optax.tree.norm(applied), mean((norms > clip_norm).astype(jnp.float32)))

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P()),
                         out_specs=P(), check_vma=False)(
        state.params, state.batch_stats, dict(batch), step_rngs(state))

  compute_grads = per_replica_grads if per_replica else global_grads

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    grads, metrics, batch_stats, grad_norm, clipped = compute_grads(state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(metrics['total_loss']) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_step=jnp.where(~finite & (state.nonfinite_step < 0), state.step,
                                 state.nonfinite_step))
    return new_state, dict(metrics, grad_norm=grad_norm, clipped=clipped)

  return train_step


def make_predict_step(detector: Detector) -> Callable[[dict, dict], dict]:
  """(variables, batch) -> the detector's detections (input-canvas pixels)."""
  return detector.detect

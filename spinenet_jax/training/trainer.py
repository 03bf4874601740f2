"""The detector, optimizer, compiled train steps and shardings of one run config.

Generic over detectors: `detectors.build(config)` supplies everything model-specific, and the
train step (`train_step.py`) knows no detector.
"""

from __future__ import annotations

import functools
import logging

import jax
import ml_collections
from jax.sharding import Mesh, Sharding

from spinenet_jax import sharding
from spinenet_jax.data import datasets
from spinenet_jax.detectors import base as detectors
from spinenet_jax.training import optimizer as opt_lib
from spinenet_jax.training import train_step as step_lib
from spinenet_jax.training import warm_start

log = logging.getLogger(__name__)


def make_optimizer(config: ml_collections.ConfigDict):
  """The optimizer of `config.train`; with per-replica clipping the step clips, so it does not."""
  t = config.train
  if t.gradient_clip_mode == 'per_replica':
    t = ml_collections.ConfigDict(dict(t.to_dict(), gradient_clip_norm=0.0))
  return opt_lib.make_optimizer(t)


class Trainer:
  """Detector, optimizer, compiled steps and sharding for one config."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None = None):
    self.config = config
    self.mesh = mesh or sharding.make_mesh()
    self.detector = detectors.build(config)
    self.tx = make_optimizer(config)
    self.image_size = datasets.parser_config(config).padded_size
    self.replicated = sharding.replicated(self.mesh)
    self._steps = {}
    self.train_step = self.train_step_at(self.image_size)
    self._init = functools.partial(step_lib.init_state, self.detector, self.tx, self.image_size,
                                   config.seed)

  def check_batch(self) -> None:
    """Raises ValueError, naming the keys, unless every device gets whole replica groups (the
    per-replica clip) of the global batch; called before any data is prepared."""
    t = self.config.train
    group = self.config.loss.get('normalizer_group_size')
    if t.gradient_clip_mode != 'per_replica' or not t.gradient_clip_norm or not group:
      return
    devices = self.mesh.size
    if t.global_batch_size % (devices * group):
      raise ValueError(
          f"config.train.gradient_clip_mode='per_replica' needs whole replica groups on every "
          f'device: config.train.global_batch_size={t.global_batch_size} must be a multiple of '
          f'{devices} devices x config.loss.normalizer_group_size={group}. Change one of them, or '
          "set config.train.gradient_clip_mode='global'.")

  def train_step_at(self, image_size: tuple[int, int]):
    """The jitted train step for inputs of `image_size` (anchors depend on it)."""
    image_size = tuple(image_size)
    if image_size not in self._steps:
      t = self.config.train
      step = step_lib.make_train_step(
          self.detector, self.tx, self.config.loss.l2_weight_decay, t.gradient_clip_norm,
          t.gradient_clip_mode, self.config.loss.get('normalizer_group_size'), self.mesh)
      self._steps[image_size] = jax.jit(
          step, in_shardings=(self.replicated, sharding.batch_sharding(self.mesh)),
          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    return self._steps[image_size]

  def abstract_state(self) -> step_lib.TrainState:
    shapes = jax.eval_shape(self._init)
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

  def new_state(self) -> step_lib.TrainState:
    state = jax.jit(self._init, out_shardings=self.replicated)()
    if self.config.init_checkpoint:
      state = load_weights(state, self.config.init_checkpoint, self.replicated)
    return state


def load_weights(state: step_lib.TrainState, directory: str,
                 target: Sharding) -> step_lib.TrainState:
  """Starts from the weights of a model checkpoint (e.g. a converted official one), placed with
  sharding `target`. Variables of another shape or missing from the checkpoint (a class layer for
  other classes, the head when it holds a backbone only) keep their fresh initialization and are
  logged (`warm_start.load`); ValueError if most of the backbone does not fit."""
  variables, _ = warm_start.load(variables_of(state), directory)
  variables = jax.device_put(variables, target)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


def variables_of(state: step_lib.TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


@functools.lru_cache(maxsize=8)
def predict_step(detector: detectors.Detector, mesh: Mesh | None = None):
  """The jitted detect function of `detector`, batches sharded over `mesh` (if given).

  The same function object for the same detector and mesh, so periodic evaluations, the final
  one and prediction compile once per input size.
  """
  step = step_lib.make_predict_step(detector)
  if mesh is None:
    return jax.jit(step)
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)))

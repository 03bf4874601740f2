"""The training and evaluation loops behind `main.py` (importable: a notebook can call them).

    from spinenet_jax.training import loop
    loop.run(config, workdir, mode='train_and_eval')

Data parallelism: one `jax.jit` program over a 1-D device mesh ('data'); parameters and optimizer
state are replicated, batches are sharded along the batch axis, so batch-norm statistics and the
loss cover the global batch. With several processes (`jax.distributed.initialize`, done by
`main.py`) each process feeds its share of every global batch.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spinenet_jax import model_io
from spinenet_jax.data import input_pipeline
from spinenet_jax.evaluation import coco_eval
from spinenet_jax.modeling import factory
from spinenet_jax.modeling.retinanet import RetinaNet
from spinenet_jax.training import checkpoints as ckpt_lib
from spinenet_jax.training import data as data_lib
from spinenet_jax.training import distributed, preemption, settings
from spinenet_jax.training import optimizer as opt_lib
from spinenet_jax.training import train_step as step_lib

log = logging.getLogger(__name__)
MODES = ('train', 'eval', 'train_and_eval', 'predict')


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last checkpoint (written before that step) is intact."""


class _QuietLibraries(logging.Filter):
  """Drops the per-save INFO chatter of orbax and TFDS (warnings and errors still pass)."""
  NOISY = ('/orbax/', '/tensorflow_datasets/')

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())


def make_mesh(devices=None) -> Mesh:
  """A 1-D 'data' mesh over all devices (automatic sharding propagation, not explicit axes)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ('data',))


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = 'train_and_eval') -> dict:
  """Runs `mode` ('train', 'eval', 'train_and_eval' or 'predict'); returns its metrics."""
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
  config = settings.finalize(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'config_{mode}.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  if mode == 'predict':
    from spinenet_jax.evaluation import predict
    return predict.predict_folder(config, workdir)
  if mode == 'eval':
    return evaluate_checkpoint(config, workdir)
  return train(config, workdir, evaluate_at_end=(mode == 'train_and_eval'))


def _batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


class Trainer:
  """Model, optimizer, compiled steps and sharding for one config."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None = None):
    self.config = config
    self.mesh = mesh or make_mesh()
    self.model = factory.build_model(config.model)
    self.tx = opt_lib.make_optimizer(config.train)
    self.image_size = data_lib.parser_config(config).padded_size
    self.replicated = _replicated(self.mesh)
    self._steps = {}
    self.train_step = self.train_step_at(self.image_size)
    self._init = functools.partial(step_lib.init_state, self.model, self.tx, self.image_size,
                                   config.seed)

  def train_step_at(self, image_size: tuple[int, int]):
    """The jitted train step for inputs of `image_size` (anchors depend on it)."""
    image_size = tuple(image_size)
    if image_size not in self._steps:
      step = step_lib.make_train_step(self.model, self.tx, factory.loss_config(self.config),
                                      image_size)
      self._steps[image_size] = jax.jit(
          step, in_shardings=(self.replicated, _batch_sharding(self.mesh)),
          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    return self._steps[image_size]

  def abstract_state(self) -> step_lib.TrainState:
    shapes = jax.eval_shape(self._init)
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

  def new_state(self) -> step_lib.TrainState:
    state = jax.jit(self._init, out_shardings=self.replicated)()
    if self.config.init_checkpoint:
      state = _load_weights(state, self.config.init_checkpoint, self.replicated)
    return state


def _load_weights(state: step_lib.TrainState, directory: str, sharding) -> step_lib.TrainState:
  """Starts from the weights of a model checkpoint (e.g. a converted official one)."""
  _, variables, _ = model_io.load_model(directory)
  new = {'params': state.params, 'batch_stats': state.batch_stats}
  loaded = {k: variables.get(k, {}) for k in new}
  mine, theirs = jax.tree_util.tree_structure(new), jax.tree_util.tree_structure(loaded)
  if mine != theirs:
    raise ValueError(f'init_checkpoint {directory} does not fit the configured model: variables '
                     'differ in structure (check config.model against its model.json).')
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new),
                          jax.tree_util.tree_leaves(loaded)):
    if a.shape != b.shape:
      raise ValueError(f'init_checkpoint {directory}: {jax.tree_util.keystr(path)} has shape '
                       f'{b.shape}, the configured model needs {a.shape}.')
  loaded = jax.device_put(jax.tree_util.tree_map(jnp.asarray, loaded), sharding)
  log.info('Initialized from model checkpoint %s.', directory)
  return state.replace(params=loaded['params'], batch_stats=loaded['batch_stats'])


def _meta(config, step: int) -> dict:
  g = config.train.global_batch_size
  return {'step': step, 'examples_seen': step * g, 'global_batch_size': g, 'seed': config.seed}


def _restore(trainer: Trainer, checkpoints: ckpt_lib.Checkpoints):
  restored = checkpoints.restore_latest(trainer.abstract_state())
  if restored is None:
    return trainer.new_state(), 0
  state, meta = restored
  config = trainer.config
  if meta.get('global_batch_size') != config.train.global_batch_size or \
      meta.get('seed') != config.seed:
    raise ValueError(f'The checkpoint in {checkpoints.directory} was written with global batch '
                     f'{meta.get("global_batch_size")} and seed {meta.get("seed")}; the config has '
                     f'{config.train.global_batch_size} and {config.seed}. Use a new workdir.')
  return state, int(meta['step'])


def host(tree: Any) -> Any:
  """Numpy copies of replicated arrays (this process's copy: works on any number of hosts)."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _check_finite(state: step_lib.TrainState, last_saved: int | None) -> None:
  bad = int(host(state.nonfinite_step))
  if bad >= 0:
    raise NonFiniteLossError(
        f'The loss became NaN or Inf at step {bad}; training stopped. The last good checkpoint '
        f'(step {last_saved}) is intact: lower the learning rate or check the data, then resume.')


def train(config: ml_collections.ConfigDict, workdir: str, evaluate_at_end: bool = False) -> dict:
  """Trains to `config.train.total_steps` (resuming from `workdir`); returns the last metrics."""
  trainer = Trainer(config)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                     keep=config.train.keep_checkpoints)
  state, step = _restore(trainer, checkpoints)
  last_saved = step if step else None
  total = config.train.total_steps
  train_split = data_lib.load_split(config, 'train', workdir)
  eval_split = data_lib.load_split(config, 'eval', workdir) if (
      evaluate_at_end or config.train.eval_every_steps) else None
  log.info('Training %s steps %d -> %d, global batch %d on %d devices (%d processes); train '
           'split: %d images.', config.model.backbone.model_id, step, total,
           config.train.global_batch_size, jax.device_count(), jax.process_count(),
           train_split.num_examples)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  hooks = [periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_steps=config.train.log_every_steps)]
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
  schedule = opt_lib.learning_rate_schedule(config.train)
  pending, metrics, t0, s0 = [], {}, time.time(), step
  log_every, save_every = config.train.log_every_steps, config.train.checkpoint_every_steps

  def save(at: int) -> None:
    nonlocal last_saved
    _check_finite(state, last_saved)
    # A copy: the async save reads its arrays in the background while the next steps donate
    # (reuse) the state's buffers, which on CPU are the very memory the save would read.
    snapshot = jax.tree_util.tree_map(jnp.copy, state)
    checkpoints.save(at, snapshot, _meta(config, at), force=True)
    last_saved = at

  stopped, size = False, None
  with preemption.StopGuard() as guard:
    while step < total:
      wanted = settings.train_image_size(config, step)
      if wanted != size:
        size = wanted
        batches = None   # the previous phase's pipeline stops before the next one compiles
        gc.collect()
        batches, train_step = _start_phase(trainer, train_split, state, step, size)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = train_step(state, next(batches))
      step += 1
      pending.append(step_metrics)
      for hook in hooks:
        hook(step)
      if step % log_every == 0 or step == total:
        _check_finite(state, last_saved)
        # Averaged on the host: stacking on device would compile anew for each count of steps.
        fetched = host(pending)
        metrics = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        elapsed = time.time() - t0
        metrics.update(learning_rate=float(schedule(step - 1)),
                       images_per_sec=(step - s0) * config.train.global_batch_size / elapsed)
        writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})
        pending, t0, s0 = [], time.time(), step
      stop = guard.stop_requested(sync=(step % log_every == 0))
      if stop or step % save_every == 0 or step == total:
        save(step)
      if stop and step < total:
        log.warning('Stopped at step %d on request; checkpoint saved. Run the same command to '
                    'resume.', step)
        stopped = True
        break
      if eval_split is not None and config.train.eval_every_steps and \
          step % config.train.eval_every_steps == 0 and step < total:
        evaluate(trainer.model, _variables(state), trainer.mesh, config, eval_split, workdir,
                 step, writer)
  checkpoints.close()
  if stopped:
    writer.close()
    return dict(metrics, stopped_at=step)
  if jax.process_index() == 0:
    _export(config, trainer, state, workdir, step)
  if evaluate_at_end:
    metrics.update(evaluate(trainer.model, _variables(state), trainer.mesh, config, eval_split,
                            workdir, step, writer))
  writer.close()
  return metrics


def _start_phase(trainer: Trainer, split: data_lib.Split, state: step_lib.TrainState,
                 step: int, image_size: tuple[int, int]):
  """(batches, compiled train step) for training at `image_size` from `step` on."""
  config = trainer.config
  if config.train.low_res_steps:
    log.info('Step %d: training at %dx%d.', step, *image_size)
  batches = input_pipeline.prefetch_to_mesh(
      data_lib.train_batches(config, split, start_batch=step,
                             image_size=image_size).as_numpy_iterator(), trainer.mesh)
  train_step = trainer.train_step_at(image_size)
  batches = _compile_then_meet(train_step, state, batches,
                               f'train_step_{step}_{image_size[0]}x{image_size[1]}')
  return batches, train_step


def _compile_then_meet(jitted, first_arg, batches: Iterator[dict], name: str) -> Iterator[dict]:
  """`batches` unchanged, once `jitted(first_arg, batch)` is compiled and all processes have met
  at barrier `name`: gloo sets up its connections at the first collective under a fixed 30 s
  deadline, which processes that compiled or loaded data at different speeds would miss (see
  distributed.barrier). The peeked first batch goes back in front of the stream."""
  first = next(batches, None)
  if first is None:
    return iter(())
  jitted.lower(first_arg, first).compile()
  distributed.barrier(name)
  return itertools.chain([first], batches)


def _variables(state: step_lib.TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _export(config, trainer: Trainer, state, workdir: str, step: int) -> None:
  """The final weights as a model checkpoint (`workdir/model`), for eval, predict and export."""
  directory = os.path.join(workdir, 'model')
  if os.path.exists(directory):
    shutil.rmtree(directory)
  model_io.save_model(directory, trainer.model.config, host(_variables(state)),
                      {'step': step, 'source': 'spinenet_jax training', 'workdir': workdir})


def evaluate(model: RetinaNet, variables: dict, mesh: Mesh, config, split: data_lib.Split,
             workdir: str, step: int, writer=None) -> dict:
  """COCO box metrics of `variables` on `split`; written to `workdir/eval` and TensorBoard."""
  predict = predict_step_for(model, config, mesh)
  evaluator = coco_eval.CocoEvaluator(split.annotation_file,
                                      drop_padded=config.eval.drop_padded_detections)
  variables = jax.device_put(variables, _replicated(mesh))
  t0 = time.time()
  batches = input_pipeline.prefetch_to_mesh(
      data_lib.eval_batches(config, split).as_numpy_iterator(), mesh)
  for batch in _compile_then_meet(predict, variables, batches, f'eval_{step}'):
    detections = predict(variables, batch)
    keep = {k: batch[k] for k in ('image_info', 'source_id', 'gt_boxes', 'gt_classes',
                                  'gt_is_crowd')}
    fetched = _gather({'detections': detections, **keep})
    if jax.process_index() == 0:
      evaluator.update(fetched['detections'], fetched['image_info'], fetched['source_id'],
                       {k: fetched[k] for k in ('gt_boxes', 'gt_classes', 'gt_is_crowd')})
  if jax.process_index() != 0:
    return {}
  metrics = evaluator.evaluate()
  log.info('Step %d: evaluated %d images in %.1f s: %s', step, len(set(evaluator.image_ids)),
           time.time() - t0, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f'metrics_{step}.json'), 'w') as f:
    json.dump(dict(metrics, step=step, num_images=len(set(evaluator.image_ids))), f, indent=2)
  if config.eval.save_detections:
    with open(os.path.join(out_dir, f'detections_{step}.json'), 'w') as f:
      json.dump(evaluator.detections, f)
  if writer is not None:
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    writer.flush()
  return {f'eval/{k}': v for k, v in metrics.items()}


def predict_step_for(model: RetinaNet, config, mesh: Mesh | None = None):
  """The jitted predict step at the config's input size, batches sharded over `mesh` (if given).

  The same function object for the same model, settings and mesh, so periodic evaluations and the
  final one compile once.
  """
  return _jitted_predict_step(model, factory.detection_config(config),
                              data_lib.parser_config(config).padded_size, mesh)


@functools.lru_cache(maxsize=8)
def _jitted_predict_step(model: RetinaNet, detection_config, image_size: tuple[int, int],
                         mesh: Mesh | None):
  step = step_lib.make_predict_step(model, detection_config, image_size)
  if mesh is None:
    return jax.jit(step)
  return jax.jit(step, in_shardings=(_replicated(mesh), _batch_sharding(mesh)))


def _gather(tree: Any) -> Any:
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def load_for_eval(config, workdir: str) -> tuple[RetinaNet, dict, int]:
  """(model, variables, step): `config.init_checkpoint` (a model checkpoint, e.g. converted from
  TF, with its own model settings) if set, else the newest training checkpoint in `workdir`."""
  if config.init_checkpoint:
    model_config, variables, info = model_io.load_model(config.init_checkpoint)
    model = factory.model_from_config(model_config, factory.compute_dtype(config.model.dtype))
    if not isinstance(model, RetinaNet):
      raise ValueError(f'{config.init_checkpoint} holds a backbone only; eval needs a RetinaNet.')
    log.info('Evaluating model checkpoint %s (%s).', config.init_checkpoint, info)
    return model, {k: variables[k] for k in ('params', 'batch_stats') if k in variables}, \
        int(info.get('step', 0))
  trainer = Trainer(config)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=None)
  restored = checkpoints.restore_latest(trainer.abstract_state())
  checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f'No training checkpoint in {workdir}/checkpoints and no '
                            'config.init_checkpoint: nothing to evaluate.')
  state, meta = restored
  return trainer.model, _variables(state), int(meta['step'])


def evaluate_checkpoint(config, workdir: str) -> dict:
  model, variables, step = load_for_eval(config, workdir)
  split = data_lib.load_split(config, 'eval', workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  metrics = evaluate(model, variables, make_mesh(), config, split, workdir, step, writer)
  writer.close()
  return metrics

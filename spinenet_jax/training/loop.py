"""The training loop: resume, train to `config.train.total_steps`, checkpoint, log, evaluate.

    from spinenet_jax.training import loop
    loop.train(config, workdir)

Data parallelism: one `jax.jit` program over a 1-D device mesh ('data'); parameters and optimizer
state are replicated, batches are sharded along the batch axis, so batch-norm statistics and the
loss cover the global batch. With several processes (`jax.distributed.initialize`, done by
`main.py`) each process feeds its share of every global batch.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions

from spinenet_jax import model_io, sharding
from spinenet_jax.data import datasets, input_pipeline
from spinenet_jax.evaluation import run as eval_run
from spinenet_jax.training import checkpoints as ckpt_lib
from spinenet_jax.training import optimizer as opt_lib
from spinenet_jax.training import preemption, progress, settings
from spinenet_jax.training import train_step as step_lib
from spinenet_jax.training.trainer import Trainer, predict_step, variables_of

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last checkpoint (written before that step) is intact."""


def _meta(config, step: int) -> dict:
  t = config.train
  g = t.global_batch_size
  return {'step': step, 'examples_seen': step * g, 'global_batch_size': g, 'seed': config.seed,
          'gradient_clip_mode': t.gradient_clip_mode, 'gradient_clip_norm': t.gradient_clip_norm}


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
  t = config.train
  for key in ('gradient_clip_mode', 'gradient_clip_norm'):
    if key in meta and meta[key] != t[key]:
      log.warning('Resuming with config.train.%s=%r; the checkpoint was trained with %r.', key,
                  t[key], meta[key])
  return state, int(meta['step'])


def check_finite(state: step_lib.TrainState, last_saved: int | None) -> None:
  """Raises NonFiniteLossError when a step's loss was NaN or Inf (one host read)."""
  bad = int(sharding.host(state.nonfinite_step))
  if bad >= 0:
    raise NonFiniteLossError(
        f'The loss became NaN or Inf at step {bad}; training stopped. The last good checkpoint '
        f'(step {last_saved}) is intact: lower the learning rate or check the data, then resume.')


def evaluate(trainer: Trainer, state: step_lib.TrainState, split: datasets.Split, workdir: str,
             step: int, writer=None) -> dict:
  """The detector's evaluations of the current weights on `split`."""
  return eval_run.evaluate(predict_step(trainer.detector, trainer.mesh), variables_of(state),
                           trainer.mesh, trainer.config, split, workdir, step,
                           trainer.detector.eval_types, writer)


def train(config: ml_collections.ConfigDict, workdir: str, evaluate_at_end: bool = False) -> dict:
  """Trains to `config.train.total_steps` (resuming from `workdir`); returns the last metrics."""
  trainer = Trainer(config)
  trainer.check_batch()
  # The data first: a dataset that would train wrongly stops the run before any compilation.
  detector = trainer.detector
  masks = detector.parser_options.get('include_masks', False)
  train_split = datasets.load_split(config, 'train', workdir, detector.num_classes,
                                    detector.num_classes_key, masks)
  eval_split = datasets.load_split(config, 'eval', workdir, detector.num_classes,
                                   detector.num_classes_key, masks) if (
      evaluate_at_end or config.train.eval_every_steps) else None
  datasets.check_categories(train_split, eval_split)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                     keep=config.train.keep_checkpoints)
  state, step = _restore(trainer, checkpoints)
  last_saved = step if step else None
  total = config.train.total_steps
  log.info('Training %s %s steps %d -> %d, global batch %d on %d devices (%d processes); train '
           'split: %d images.', trainer.detector.type, config.model.backbone.model_id, step, total,
           config.train.global_batch_size, jax.device_count(), jax.process_count(),
           train_split.num_examples)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  hooks = []
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
  schedule = opt_lib.learning_rate_schedule(config.train)
  timer = progress.Progress(settings.phases(config), start=step)
  pending, metrics, t0, s0 = [], {}, time.time(), step
  log_every, save_every = config.train.log_every_steps, config.train.checkpoint_every_steps

  def save(at: int) -> None:
    nonlocal last_saved
    check_finite(state, last_saved)
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
        timer.restart(step)
        t0, s0 = time.time(), step
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = train_step(state, next(batches))
      step += 1
      pending.append(step_metrics)
      for hook in hooks:
        hook(step)
      if step % log_every == 0 or step == total:
        check_finite(state, last_saved)
        # Averaged on the host: stacking on device would compile anew for each count of steps.
        fetched = sharding.host(pending)
        metrics = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        elapsed = time.time() - t0
        metrics.update(learning_rate=float(schedule(step - 1)),
                       steps_per_sec=(step - s0) / elapsed,
                       images_per_sec=(step - s0) * config.train.global_batch_size / elapsed)
        writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})
        timer.mark(step)
        log.info('%s', timer.report(step))
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
        evaluate(trainer, state, eval_split, workdir, step, writer)
        timer.restart(step)
        t0, s0 = time.time(), step
  checkpoints.close()
  if stopped:
    writer.close()
    return dict(metrics, stopped_at=step)
  if jax.process_index() == 0:
    _export(trainer, state, workdir, step)
  if evaluate_at_end:
    metrics.update(evaluate(trainer, state, eval_split, workdir, step, writer))
  writer.close()
  return metrics


def _start_phase(trainer: Trainer, split: datasets.Split, state: step_lib.TrainState,
                 step: int, image_size: tuple[int, int]):
  """(batches, compiled train step) for training at `image_size` from `step` on."""
  config = trainer.config
  if config.train.low_res_steps:
    log.info('Step %d: training at %dx%d.', step, *image_size)
  batches = input_pipeline.prefetch_to_mesh(
      datasets.train_batches(config, split, start_batch=step, image_size=image_size,
                             **trainer.detector.parser_options).as_numpy_iterator(),
      trainer.mesh)
  train_step = trainer.train_step_at(image_size)
  batches = sharding.compile_then_meet(train_step, state, batches,
                                       f'train_step_{step}_{image_size[0]}x{image_size[1]}')
  return batches, train_step


def _export(trainer: Trainer, state, workdir: str, step: int) -> None:
  """The final weights as a model checkpoint (`workdir/model`), for eval, predict and export."""
  directory = os.path.join(workdir, 'model')
  if os.path.exists(directory):
    shutil.rmtree(directory)
  model_io.save_model(directory, trainer.detector.model_config,
                      sharding.host(variables_of(state)),
                      {'step': step, 'source': 'spinenet_jax training', 'workdir': workdir})

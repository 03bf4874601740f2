"""What `main.py --mode=...` runs: train, eval, train_and_eval or predict (importable: a notebook
can call `run` too).

    from spinenet_jax.training import modes
    modes.run(config, workdir, mode='train_and_eval')
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
from clu import metric_writers

from spinenet_jax import model_io, sharding
from spinenet_jax.data import datasets
from spinenet_jax.detectors import base as detectors
from spinenet_jax.evaluation import predict as predict_lib
from spinenet_jax.evaluation import run as eval_run
from spinenet_jax.training import checkpoints as ckpt_lib
from spinenet_jax.training import loop, settings
from spinenet_jax.training.trainer import Trainer, predict_step, variables_of

log = logging.getLogger(__name__)
MODES = ('train', 'eval', 'train_and_eval', 'predict')


class _QuietLibraries(logging.Filter):
  """Drops the per-save INFO chatter of orbax and TFDS (warnings and errors still pass)."""
  NOISY = ('/orbax/', '/tensorflow_datasets/')

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())


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
    predict_lib.image_files(config)          # a bad input folder fails before the model loads
    detector, variables, _ = load_for_eval(config, workdir)
    return predict_lib.predict_folder(config, workdir, predict_step(detector), variables)
  if mode == 'eval':
    return evaluate_checkpoint(config, workdir)
  return loop.train(config, workdir, evaluate_at_end=(mode == 'train_and_eval'))


def load_for_eval(config, workdir: str) -> tuple[detectors.Detector, dict, int]:
  """(detector, variables, step): `config.init_checkpoint` (a model checkpoint, e.g. converted
  from TF, with its own model settings) if set, else the newest training checkpoint in `workdir`."""
  if config.init_checkpoint:
    model_config, variables, info = model_io.load_model(config.init_checkpoint)
    kind = model_io.model_type(model_config)
    if kind not in detectors.types():
      raise ValueError(f'{config.init_checkpoint} holds a {kind} backbone only; eval and predict '
                       f'need a detector ({", ".join(detectors.types())}).')
    detector = detectors.from_model_config(model_config, kind, config)
    log.info('Evaluating model checkpoint %s (%s).', config.init_checkpoint, info)
    return detector, {k: variables[k] for k in ('params', 'batch_stats') if k in variables}, \
        int(info.get('step', 0))
  trainer = Trainer(config)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=None)
  restored = checkpoints.restore_latest(trainer.abstract_state())
  checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f'No training checkpoint in {workdir}/checkpoints and no '
                            'config.init_checkpoint: nothing to evaluate.')
  state, meta = restored
  return trainer.detector, variables_of(state), int(meta['step'])


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`--mode=eval`: the detector's evaluations of a checkpoint on the eval split."""
  detector, variables, step = load_for_eval(config, workdir)
  split = datasets.load_split(config, 'eval', workdir, detector.num_classes,
                              detector.num_classes_key,
                              detector.parser_options.get('include_masks', False))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  mesh = sharding.make_mesh()
  metrics = eval_run.evaluate(predict_step(detector, mesh), variables, mesh, config, split,
                              workdir, step, detector.eval_types, writer)
  writer.close()
  return metrics

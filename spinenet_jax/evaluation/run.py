"""Evaluation of a predict function over an evaluation split, on any number of devices and hosts.

The caller (the training loop, `--mode=eval`, a notebook) hands over a jitted predict function and
the evaluation types its detector supports; nothing here knows the trainer or the detector.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
from jax.sharding import Mesh

from spinenet_jax import sharding
from spinenet_jax.data import datasets, input_pipeline
from spinenet_jax.evaluation import evaluator as evaluator_lib

log = logging.getLogger(__name__)



def _kept(batch: dict, with_groundtruth: bool) -> dict:
  """What the evaluators read of a batch: image geometry and ids, and the ground truth when it
  does not come from a json."""
  return {k: v for k, v in batch.items() if k in evaluator_lib.BATCH_KEYS or (
      with_groundtruth and k.startswith(evaluator_lib.GROUNDTRUTH_PREFIX))}


def evaluate(predict: Callable, variables: dict, mesh: Mesh, config, split: datasets.Split,
             workdir: str, step: int, eval_types: Sequence[str] = ('bbox',),
             writer=None) -> dict[str, float]:
  """Metrics of `predict(variables, batch)` on `split` for each evaluation type, written to
  `workdir/eval/metrics_<step>.json` and TensorBoard (process 0).

  Keys are '<metric>' for 'bbox' (AP, AP50, ...) and '<type>/<metric>' for the other types.
  Returns {'eval/<key>': value} on process 0 and {} elsewhere.
  """
  groundtruth = split.groundtruth if split.groundtruth is not None else split.annotation_file
  backend = config.eval.get('coco_backend', 'hotcoco')
  evaluators = {t: evaluator_lib.build(t, groundtruth,
                                       drop_padded=config.eval.drop_padded_detections,
                                       backend=backend)
                for t in eval_types}
  variables = jax.device_put(variables, sharding.replicated(mesh))
  t0 = time.time()
  batches = input_pipeline.prefetch_to_mesh(
      datasets.eval_batches(config, split).as_numpy_iterator(), mesh)
  for batch in sharding.compile_then_meet(predict, variables, batches, f'eval_{step}'):
    detections = predict(variables, batch)
    fetched = sharding.gather({'detections': detections,
                                'batch': _kept(batch, groundtruth is None)})
    if jax.process_index() == 0:
      for e in evaluators.values():
        e.process(fetched['detections'], fetched['batch'])
  if jax.process_index() != 0:
    return {}
  metrics = {}
  for eval_type, e in evaluators.items():
    prefix = '' if eval_type == 'bbox' else f'{eval_type}/'
    metrics.update({prefix + k: v for k, v in e.evaluate().items()})
  num_images = next(iter(evaluators.values())).num_images
  log.info('Step %d: evaluated %d images in %.1f s: %s', step, num_images, time.time() - t0,
           json.dumps({k: round(v, 4) for k, v in metrics.items()}))
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f'metrics_{step}.json'), 'w') as f:
    json.dump(dict(metrics, step=step, num_images=num_images), f, indent=2)
  if config.eval.save_detections:
    for eval_type, e in evaluators.items():
      name = 'detections' if eval_type == 'bbox' else f'{eval_type}_detections'
      with open(os.path.join(out_dir, f'{name}_{step}.json'), 'w') as f:
        json.dump(e.results(), f)
  if writer is not None:
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    writer.flush()
  return {f'eval/{k}': v for k, v in metrics.items()}

"""Times a RetinaNet config: forward, forward + backward, post-processing and anchor labelling.

  python tools/benchmark.py --config=configs/spinenet49.py --batch_size=2 [--steps=5]
      [--dtype=bfloat16] [--reference_python=/path/to/tf-models-official/venv/bin/python]
      [--reference_torch]

Every measurement is the median wall time of --steps runs after one warm-up run (compile excluded),
with results blocked on. `--reference_python` runs tools/benchmark_tf_reference.py (TF Model
Garden's SpineNet-49 RetinaNet) under that interpreter in the same run and adds the ratios.
`--reference_torch` times the forward of the same model and weights exported to PyTorch
(tools/pytorch_spinenet.py; needs torch) on the same device and reports its largest relative output
difference. Prints one JSON object; record it in docs/benchmarks.md with the machine, date and
command.
"""

import json
import os
import platform
import statistics
import subprocess
import time

import _bootstrap  # noqa: F401
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from spinenet_jax import losses
from spinenet_jax.modeling import factory
from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import postprocess
from spinenet_jax.ops import target_assigner

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_BATCH = flags.DEFINE_integer('batch_size', 2, 'Images per step.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed runs per measurement (median reported).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Override config.model.dtype.')
_REFERENCE = flags.DEFINE_string('reference_python', None,
                                 'Interpreter with tf-models-official for a same-run reference.')
_TORCH = flags.DEFINE_bool('reference_torch', False,
                           'Also time the PyTorch export of the model (same weights, same device).')
_ONLY = flags.DEFINE_list('only', None, 'Subset of: forward, train, postprocess, labels.')
flags.mark_flags_as_required(['config'])


def _time(fn, *args) -> float:
  jax.block_until_ready(fn(*args))   # compile + warm up
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _torch_reference(model, variables, images, outputs) -> dict:
  """Forward time of the PyTorch export (bfloat16 under autocast, as JAX computes it)."""
  import convert_to_pytorch
  import pytorch_spinenet
  import torch

  from spinenet_jax import model_io
  device = 'cuda' if jax.devices()[0].platform == 'gpu' and torch.cuda.is_available() else 'cpu'
  net = pytorch_spinenet.build_model(model_io.config_to_dict(model.config))
  state = convert_to_pytorch.state_dict_from_variables(jax.device_get(variables))
  net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False)
  net = net.to(device).eval()   # (the unloaded keys are num_batches_tracked, unused in eval)
  x = torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy()).to(device)
  autocast = torch.autocast(device, torch.bfloat16, enabled=model.dtype == jnp.bfloat16)

  def forward():
    with torch.inference_mode(), autocast:
      out = net(x)
    if device == 'cuda':
      torch.cuda.synchronize()
    return out

  out, error = forward(), 0.0
  for kind, levels in outputs.items():
    for level, ref in levels.items():
      ref = np.asarray(ref, np.float32)
      ours = out[kind][level].float().cpu().numpy().transpose(0, 2, 3, 1)
      error = max(error, float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)))
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    forward()
    times.append(time.perf_counter() - start)
  return {'torch': torch.__version__, 'torch_device': device,
          'torch_forward_s': statistics.median(times), 'torch_max_rel_error': error}


def _setup(config):
  model_config = config.model
  if _DTYPE.value:
    model_config.unlock()
    model_config.dtype = _DTYPE.value
  model = factory.build_model(model_config)
  size = tuple(config.input.image_size)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(_BATCH.value, *size, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), images)
  anchor_config = model.config.anchors
  anchors = jnp.asarray(anchor_ops.generate_anchors(anchor_config, size))
  level_anchors = {k: jnp.asarray(v) for k, v in
                   anchor_ops.unpack_levels(np.asarray(anchors), anchor_config, size).items()}
  # 20 ground-truth boxes per image, padded to 100.
  yx = rng.uniform(0, 0.7, (_BATCH.value, 100, 2)) * np.array(size)
  hw = rng.uniform(0.05, 0.3, (_BATCH.value, 100, 2)) * np.array(size)
  gt_boxes = jnp.asarray(np.concatenate([yx, yx + hw], -1), jnp.float32)
  gt_classes = jnp.asarray(np.where(np.arange(100) < 20, rng.integers(1, 91, (_BATCH.value, 100)), -1))
  return model, variables, images, anchors, level_anchors, gt_boxes, gt_classes, size


def main(argv):
  del argv
  config = _CONFIG.value
  model, variables, images, anchors, level_anchors, gt_boxes, gt_classes, size = _setup(config)
  loss_config = factory.loss_config(config)
  det_config = factory.detection_config(config)
  anchor_config = model.config.anchors
  only = set(_ONLY.value or ['forward', 'train', 'postprocess', 'labels'])
  result = {'model_id': config.model.backbone.model_id,
            'image_size': list(size), 'batch_size': _BATCH.value,
            'dtype': jnp.dtype(model.dtype).name,
            'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
            'host': platform.node(), 'cpus': os.cpu_count()}
  outputs = jax.jit(model.apply)(variables, images)
  if 'forward' in only:
    result['forward_s'] = _time(jax.jit(model.apply), variables, images)

  def loss_fn(params):
    out, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, images,
                               train=True, mutable=['batch_stats'],
                               rngs={'dropout': jax.random.key(1)})
    labels = target_assigner.label_batch(anchors, gt_boxes, gt_classes)
    cls_t = anchor_ops.unpack_levels(labels.cls_targets[..., None], anchor_config, size)
    box_t = anchor_ops.unpack_levels(labels.box_targets, anchor_config, size)
    terms = losses.retinanet_loss(out['cls_outputs'], out['box_outputs'], cls_t, box_t,
                                  labels.num_positives, loss_config, level_anchors)
    return terms['model_loss'] + losses.l2_regularization(params, loss_config.l2_weight_decay)

  if 'train' in only:
    result['forward_backward_s'] = _time(jax.jit(jax.value_and_grad(loss_fn)), variables['params'])
  if 'postprocess' in only:
    output_size = jnp.asarray([size] * _BATCH.value, jnp.float32)
    detect = jax.jit(lambda o: postprocess.generate_detections(
        o['cls_outputs'], o['box_outputs'], level_anchors, output_size,
        model.config.head.num_classes, det_config))
    result['postprocess_s'] = _time(detect, outputs)
    # A trained model's worst case for NMS: many confident boxes. Logits of +2 on 2% of entries.
    rng = np.random.default_rng(1)
    busy = {k: jnp.where(jnp.asarray(rng.uniform(size=v.shape) < 0.02), 2.0, v)
            for k, v in outputs['cls_outputs'].items()}
    result['postprocess_busy_s'] = _time(detect, dict(outputs, cls_outputs=busy))
    if 'forward_s' in result:
      result['postprocess_over_forward'] = result['postprocess_s'] / result['forward_s']
  if 'labels' in only:
    label = jax.jit(lambda b, c: target_assigner.label_batch(anchors, b, c))
    result['labels_s'] = _time(label, gt_boxes, gt_classes)
    result['labels_per_image_ms'] = 1000 * result['labels_s'] / _BATCH.value
  if _TORCH.value:
    result.update(_torch_reference(model, variables, images, outputs))
    if 'forward_s' in result:
      result['speedup_forward_vs_torch'] = result['torch_forward_s'] / result['forward_s']
  if _REFERENCE.value:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'benchmark_tf_reference.py')
    ref = subprocess.run([_REFERENCE.value, script, f'--batch_size={_BATCH.value}',
                          f'--image_size={size[0]}', f'--steps={_STEPS.value}'],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get(
                             'CUDA_VISIBLE_DEVICES', ''), TF_CPP_MIN_LOG_LEVEL='2'))
    reference = json.loads(ref.stdout.strip().splitlines()[-1])
    result['reference'] = reference
    for key in ('forward_s', 'forward_backward_s', 'postprocess_s'):
      if key in result and key in reference:
        result[f'speedup_{key[:-2]}'] = reference[key] / result[key]
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)

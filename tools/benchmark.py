"""Times a detector config as training runs it: the loop's own jitted train step (labels on the
device, loss, L2, gradient, clipping, SGD update, batch-norm updates, buffer donation), the
forward, the detection generator and the anchor labels; reports images/s and peak device memory.

  python tools/benchmark.py --config=configs/spinenet49.py --batch_size=64 [--steps=10]
      [--dtype=bfloat16|float32] [--reference_torch]
      [--reference_python=/path/to/tf-models-official/venv/bin/python]

The compute dtype is the config's on a CPU and bfloat16 on an accelerator, unless --dtype says
otherwise. The batch is split over all devices as in training (a multiple of the device count);
where one device holds fewer images than `config.loss.normalizer_group_size`, the groups shrink to
fit (reported as `normalizer_group_size`). Every measurement is the median wall time of --steps
runs after one warm-up run (compile excluded), with results blocked on. `--reference_python` runs
tools/benchmark_tf_reference.py (TF Model Garden's SpineNet-49 RetinaNet) under that interpreter in
the same run and adds the ratios.
`--reference_torch` times the same model and weights exported to PyTorch (tools/pytorch_spinenet.py)
on the same device: its forward, and a train step (forward, a sigmoid-CE + L1 loss on the raw
outputs, backward, SGD with momentum; no anchor labelling), with autocast to bfloat16 where JAX
computes in it. Prints one JSON object; record it in docs/benchmarks.md with the machine, date and
command.
"""

import json
import math
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from spinenet_jax import sharding
from spinenet_jax.ops import postprocess
from spinenet_jax.ops import target_assigner
from spinenet_jax.training import settings
from spinenet_jax.training.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_BATCH = flags.DEFINE_integer('batch_size', 2, 'Images per step (global batch over all devices).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed runs per measurement (median reported).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Override config.model.dtype.')
_REFERENCE = flags.DEFINE_string('reference_python', None,
                                 'Interpreter with tf-models-official for a same-run reference.')
_TORCH = flags.DEFINE_bool('reference_torch', False,
                           'Also time the PyTorch export of the model (same weights, same device).')
_ONLY = flags.DEFINE_list('only', None, 'Subset of: train, forward, postprocess, labels.')
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
  """Forward and train-step times of the PyTorch export (bfloat16 under autocast where JAX
  computes in it)."""
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
  return {'torch': torch.__version__, 'torch_device': device,
          'torch_forward_s': _median_seconds(forward),
          'torch_train_step_s': _torch_train_step_seconds(net, x, autocast, device),
          'torch_max_rel_error': error}


def _median_seconds(fn) -> float:
  fn()
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _torch_train_step_seconds(net, x, autocast, device: str) -> float:
  """A PyTorch train step of the same network: forward, sigmoid-CE on the class outputs and L1 on
  the box outputs against fixed random targets, backward, SGD with momentum 0.9."""
  import torch
  net = net.train()
  opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
  with torch.no_grad(), autocast:
    out = net(x)
  gen = torch.Generator(device='cpu').manual_seed(0)
  cls_t = {k: (torch.rand(v.shape, generator=gen) < 0.01).float().to(device)
           for k, v in out['cls_outputs'].items()}
  box_t = {k: torch.randn(v.shape, generator=gen).to(device) for k, v in out['box_outputs'].items()}

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      out = net(x)
      loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(
          out['cls_outputs'][k].float(), cls_t[k], reduction='sum') for k in cls_t)
      loss = loss + sum((out['box_outputs'][k].float() - box_t[k]).abs().sum() for k in box_t)
    loss.backward()
    opt.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  return _median_seconds(step)


def _config(config):
  """The benchmarked config: --dtype, else bfloat16 on accelerators; the global batch."""
  config = ml_collections.ConfigDict(config.to_dict())
  accelerator = jax.devices()[0].platform != 'cpu'
  config.model.dtype = _DTYPE.value or ('bfloat16' if accelerator else config.model.dtype)
  config.train.global_batch_size = _BATCH.value
  config.init_checkpoint = None
  # Small benchmark batches: normalizer (and per-replica clip) groups of what one device holds.
  group = config.loss.normalizer_group_size
  per_device = _BATCH.value // jax.device_count()
  if group and per_device % group:
    config.loss.normalizer_group_size = math.gcd(group, per_device)
  return settings.finalize(config)


def _batch(size):
  """Random images and 20 ground-truth boxes per image, padded to 100."""
  rng = np.random.default_rng(0)
  b = _BATCH.value
  yx = rng.uniform(0, 0.7, (b, 100, 2)) * np.array(size)
  hw = rng.uniform(0.05, 0.3, (b, 100, 2)) * np.array(size)
  info = np.tile(np.array([size, size, [1, 1], [0, 0]], np.float32), (b, 1, 1))
  return {'images': rng.normal(size=(b, *size, 3)).astype(np.float32),
          'gt_boxes': np.concatenate([yx, yx + hw], -1).astype(np.float32),
          'gt_classes': np.where(np.arange(100) < 20, rng.integers(1, 91, (b, 100)),
                                 -1).astype(np.int32),
          'image_info': info}


def _time_train_step(trainer, batch) -> float:
  """Median seconds of the loop's train step (the state is donated and threaded through)."""
  state = trainer.new_state()
  sharded = jax.device_put(batch, sharding.batch_sharding(trainer.mesh))
  state, metrics = trainer.train_step(state, sharded)     # compile + warm up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, sharded)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _peak_memory() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def main(argv):
  del argv
  config = _config(_CONFIG.value)
  trainer = Trainer(config, sharding.make_mesh())
  detector = trainer.detector
  size = tuple(config.input.image_size)
  batch = _batch(size)
  images = jnp.asarray(batch['images'])
  model = detector.module
  variables = jax.jit(lambda: detector.init(jax.random.key(0), size))()
  only = set(_ONLY.value or ['train', 'forward', 'postprocess', 'labels'])
  result = {'model': detector.type, 'model_id': config.model.backbone.model_id,
            'image_size': list(size), 'batch_size': _BATCH.value, 'dtype': config.model.dtype,
            'gradient_clip_mode': config.train.gradient_clip_mode,
            'normalizer_group_size': config.loss.normalizer_group_size,
            'devices': jax.device_count(), 'device': str(jax.devices()[0].device_kind),
            'jax': jax.__version__, 'host': platform.node(), 'cpus': os.cpu_count()}
  if 'train' in only:
    result['train_step_s'] = _time_train_step(trainer, batch)
    result['train_images_per_s'] = _BATCH.value / result['train_step_s']
    result['peak_memory_bytes'] = _peak_memory()
  outputs = jax.jit(model.apply)(variables, images)
  if 'forward' in only:
    result['forward_s'] = _time(jax.jit(model.apply), variables, images)
  boxes, level_anchors = detector.anchors(size)
  if 'postprocess' in only:
    output_size = jnp.asarray([size] * _BATCH.value, jnp.float32)
    detect = jax.jit(lambda o: postprocess.generate_detections(
        o['cls_outputs'], o['box_outputs'], level_anchors, output_size,
        model.config.head.num_classes, detector.detection_config))
    result['postprocess_s'] = _time(detect, outputs)
    # A trained model's worst case for NMS: many confident boxes. Logits of +2 on 2% of entries.
    rng = np.random.default_rng(1)
    busy = {k: jnp.where(jnp.asarray(rng.uniform(size=v.shape) < 0.02), 2.0, v)
            for k, v in outputs['cls_outputs'].items()}
    result['postprocess_busy_s'] = _time(detect, dict(outputs, cls_outputs=busy))
    if 'forward_s' in result:
      result['postprocess_over_forward'] = result['postprocess_s'] / result['forward_s']
  if 'labels' in only:
    label = jax.jit(lambda b, c: target_assigner.label_batch(boxes, b, c))
    result['labels_s'] = _time(label, batch['gt_boxes'], batch['gt_classes'])
    result['labels_per_image_ms'] = 1000 * result['labels_s'] / _BATCH.value
  if _TORCH.value:
    result.update(_torch_reference(model, variables, images, outputs))
    if 'forward_s' in result:
      result['speedup_forward_vs_torch'] = result['torch_forward_s'] / result['forward_s']
    if 'train_step_s' in result:
      result['speedup_train_step_vs_torch'] = result['torch_train_step_s'] / result['train_step_s']
  if _REFERENCE.value:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'benchmark_tf_reference.py')
    ref = subprocess.run([_REFERENCE.value, script, f'--batch_size={_BATCH.value}',
                          f'--image_size={size[0]}', f'--steps={_STEPS.value}'],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=os.environ.get(
                             'CUDA_VISIBLE_DEVICES', ''), TF_CPP_MIN_LOG_LEVEL='2'))
    reference = json.loads(ref.stdout.strip().splitlines()[-1])
    result['reference'] = reference
    for key in ('forward_s', 'postprocess_s'):
      if key in result and key in reference:
        result[f'speedup_{key[:-2]}'] = reference[key] / result[key]
    if 'train_step_s' in result and 'forward_backward_s' in reference:
      result['speedup_train_step_vs_reference_forward_backward'] = (
          reference['forward_backward_s'] / result['train_step_s'])
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)

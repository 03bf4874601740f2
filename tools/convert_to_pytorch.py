"""Exports a model checkpoint of this project to PyTorch (tools/pytorch_spinenet.py; Mask R-CNN
also needs tools/pytorch_maskrcnn.py).

  python tools/convert_to_pytorch.py --checkpoint=DIR --output=model.safetensors \
      [--config=configs/spinenet49.py [--override]] [--backbone_only] [--verify]

DIR is a folder written by `spinenet_jax.model_io.save_model` (e.g. by convert_tf_checkpoint.py);
its model.json defines the model. The output is a safetensors file: the weights as a PyTorch state
dict (OIHW kernels, float32 as stored) and, in its metadata, the model config and provenance, so
`pytorch_spinenet.load(FILE)` rebuilds the module with no other input and never unpickles anything.

--config   checks the checkpoint against an ml_collections config file (any --config.* override
           applies): a difference in a setting that matters at inference stops the export with the
           list of differences. Training-only settings (stochastic depth, DropBlock, BN momentum)
           are not compared.
--override exports with the --config settings instead (e.g. a BN epsilon or padding mode the
           import got wrong); the variable shapes must still fit.
--backbone_only exports only the SpineNet of a RetinaNet or Mask R-CNN.
--verify   runs the JAX model and the exported PyTorch model (needs torch) on random images (and,
           for Mask R-CNN, random RoIs for the box and mask heads) and prints the relative L2 error
           of every output; fails above 1e-4.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from absl import app, flags

from spinenet_jax import model_io
from spinenet_jax.modeling import factory
from spinenet_jax.modeling.maskrcnn import MaskRCNN, MaskRCNNConfig
from spinenet_jax.modeling.retinanet import RetinaNetConfig

# The metadata tag pytorch_spinenet.load checks (defined here too: exporting needs no torch).
FORMAT = 'spinenet-pytorch/1'
# Leaf names of the Flax variables -> PyTorch parameter and buffer names.
LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
              'var': 'running_var', 'v': 'v'}
# Settings that change nothing at inference.
TRAINING_ONLY = ('init_drop_connect_rate', 'dropblock_keep_prob', 'dropblock_size', 'momentum')


def torch_kernel(kernel: np.ndarray) -> np.ndarray:
  """A Flax kernel in PyTorch's layout: dense [in, out] -> [out, in]; conv HWIO -> OIHW (depthwise
  [3, 3, 1, C] -> [C, 1, 3, 3], as a grouped torch conv wants). The Mask R-CNN head's transposed
  conv `conv5_mask` holds TF's conv2d_transpose kernel [kh, kw, out, in] (Flax's
  transpose_kernel=True takes it as stored); the same permutation gives ConvTranspose2d's
  [in, out, kh, kw], unflipped: both compute out[2i + a, 2j + b, c] = sum_o W[a, b, c, o] x[i, j, o]
  for its 2x2 stride-2 kernel."""
  if kernel.ndim == 2:
    return kernel.T
  return kernel.transpose(3, 2, 0, 1)


def state_dict_from_variables(variables: dict) -> dict[str, np.ndarray]:
  """Flax {'params', 'batch_stats'} -> {torch name: array} (kernels as `torch_kernel`)."""
  out = {}

  def walk(tree, path):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, path + (key,))
        continue
      if key not in LEAF_NAMES:
        raise ValueError(f'unexpected variable {"/".join(path + (key,))}')
      array = np.asarray(value)
      if key == 'kernel':
        array = torch_kernel(array)
      out['.'.join(path + (LEAF_NAMES[key],))] = np.ascontiguousarray(array)

  for collection in ('params', 'batch_stats'):
    walk(dict(variables.get(collection, {})), ())
  return out


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = tuple(v) if isinstance(v, list) else v
  return out


def config_differences(a: model_io.ModelConfig, b: model_io.ModelConfig) -> list[str]:
  """Settings that differ between two model configs and matter at inference."""
  fa, fb = _flatten(model_io.config_to_dict(a)), _flatten(model_io.config_to_dict(b))
  keys = sorted(k for k in set(fa) | set(fb) if k.rsplit('.', 1)[-1] not in TRAINING_ONLY)
  return [f'{k}: checkpoint {fa.get(k)!r}, config {fb.get(k)!r}' for k in keys
          if fa.get(k) != fb.get(k)]


def config_from_file(config: Any, like: model_io.ModelConfig) -> model_io.ModelConfig:
  """The model config of an ml_collections config, of the same kind (detector or backbone)."""
  if isinstance(like, RetinaNetConfig):
    return factory.retinanet_config(config.model)
  if isinstance(like, MaskRCNNConfig):
    return factory.maskrcnn_config(config.model)
  return factory.backbone_config(config.model)


def backbone_of(config: model_io.ModelConfig, variables: dict) -> tuple[model_io.ModelConfig, dict]:
  """The SpineNet part of a RetinaNet or Mask R-CNN checkpoint."""
  if not isinstance(config, (RetinaNetConfig, MaskRCNNConfig)):
    return config, variables
  return config.backbone, {c: v['backbone'] for c, v in variables.items() if 'backbone' in v}


def check_shapes(config: model_io.ModelConfig, variables: dict) -> None:
  """Raises ValueError unless `variables` are exactly those of `config`'s model."""
  import jax

  from spinenet_jax.interop import convert
  expected = convert.abstract_variables(config)
  want = {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  have = {jax.tree_util.keystr(p): tuple(np.shape(v))
          for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
  if bad:
    raise ValueError(f'the variables do not fit the config ({len(bad)} differ), e.g. ' +
                     '; '.join(f'{k}: variables {have.get(k)}, config {want.get(k)}'
                               for k in bad[:5]))


def write(path: str, config: model_io.ModelConfig, variables: dict, info: dict) -> None:
  """Writes `variables` and `config` as a pytorch_spinenet safetensors file."""
  from safetensors.numpy import save_file
  metadata = {'format': FORMAT,
              'config': json.dumps(model_io.config_to_dict(config)),
              'info': json.dumps(info)}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_file(state_dict_from_variables(variables), path, metadata=metadata)


def export_model(config: model_io.ModelConfig, variables: dict, output: str, info: dict,
                 config_file: Any = None, override: bool = False) -> model_io.ModelConfig:
  """Writes a model to `output` after the --config check; returns the config written."""
  if config_file is not None:
    wanted = config_from_file(config_file, config)
    differences = config_differences(config, wanted)
    if differences and not override:
      raise ValueError('the checkpoint differs from --config (pass --override to export with '
                       '--config):\n  ' + '\n  '.join(differences))
    if override:
      check_shapes(wanted, variables)
      config = wanted
  write(output, config, variables, info)
  return config


def export(checkpoint: str, output: str, config_file: Any = None, override: bool = False,
           backbone_only: bool = False) -> tuple[model_io.ModelConfig, dict]:
  """Exports the model checkpoint folder `checkpoint` to `output`; returns (config, variables)."""
  config, variables, info = model_io.load_model(checkpoint)
  if backbone_only:
    config, variables = backbone_of(config, variables)
  info = dict(info, exported_from=os.path.abspath(checkpoint), backbone_only=backbone_only)
  return export_model(config, variables, output, info, config_file, override), variables


def random_rois(size: tuple[int, int], count: int = 24, batch: int = 2,
                seed: int = 0) -> np.ndarray:
  """float32 [batch, count] RoIs (ymin, xmin, ymax, xmax) over an image of `size` for checking the
  heads: every pyramid level (exact level boundaries included), zero-area, tiny and huge boxes,
  boxes at the borders, partly and wholly outside the image."""
  h, w = size
  fixed = np.array([[0, 0, h, w], [h / 4, w / 4, h / 4, w / 4], [10, 10, 11.5, 12],
                    [-5.5, -3.25, 40, 50], [h - 20, w - 30, h + 10, w + 5], [-50, -60, -10, -20],
                    [h + 5, w + 5, h + 40, w + 60], [-900, -900, 900, 900], [0, 0, 224, 224],
                    [0, 0, 448, 448], [0, 0, 896, 896], [0, 0, 1792, 1792]], np.float64)
  rng = np.random.default_rng(seed)
  rois = []
  for _ in range(batch):
    n = max(count - len(fixed), 0)
    sides = np.exp(rng.uniform(np.log(2.0), np.log(2500.0), n))
    aspect = np.sqrt(rng.uniform(0.5, 2.0, n))
    y0, x0 = rng.uniform(-0.3 * h, 1.1 * h, n), rng.uniform(-0.3 * w, 1.1 * w, n)
    # Keep random boxes off level boundaries (sqrt(area) = 224 * 2^k), where an ulp of log may
    # pick either level; the fixed boxes test the exact boundaries.
    octave = np.log2(sides / 224.0)
    sides = np.where(np.abs(octave - np.round(octave)) < 1e-3, sides * 1.01, sides)
    random = np.stack([y0, x0, y0 + sides * aspect, x0 + sides / aspect], -1)
    rois.append(rng.permutation(np.concatenate([fixed, random])[:count]))
  return np.stack(rois).astype(np.float32)


def _flat(outputs: dict, to_numpy) -> dict[str, np.ndarray]:
  """{'kind/level': NHWC array} of per-level outputs, {'kind': array} of per-RoI ones."""
  flat = {}
  for kind, value in outputs.items():
    if isinstance(value, dict):
      flat.update({f'{kind}/{level}': to_numpy(x, True) for level, x in value.items()})
    else:
      flat[kind] = to_numpy(value, False)
  return flat


def jax_outputs(config: model_io.ModelConfig, variables: dict, images: np.ndarray,
                rois: np.ndarray | None = None, dtype: str = 'float32') -> dict[str, np.ndarray]:
  """The JAX model's outputs by name (float64 numpy): 'endpoints/3', ... for a backbone;
  'cls_outputs/3', 'box_outputs/3', ... for RetinaNet; 'endpoints/3', 'rpn_scores/3',
  'rpn_boxes/3', ..., 'class_outputs', 'box_outputs', 'mask_outputs' (every class) of RoIs
  [B, N, 4] for Mask R-CNN. `dtype`: the compute dtype ('float64' needs jax x64)."""
  import jax
  module = factory.model_from_config(config, factory.compute_dtype(dtype))
  if isinstance(config, MaskRCNNConfig):
    def run(model: MaskRCNN, x, r):
      features, scores, boxes = model.backbone_and_rpn(x)
      classes, deltas = model.box_head(features, r)
      return {'endpoints': features, 'rpn_scores': scores, 'rpn_boxes': boxes,
              'class_outputs': classes, 'box_outputs': deltas,
              'mask_outputs': model.mask_head(features, r, None)}
    out = jax.jit(lambda v, x, r: module.apply(v, x, r, method=run))(variables, images, rois)
  else:
    out = jax.jit(module.apply)(variables, images)
    if not isinstance(config, RetinaNetConfig):
      out = {'endpoints': out}
  return _flat(out, lambda x, _: np.asarray(x, np.float64))


def torch_outputs(model: Any, images: np.ndarray, rois: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
  """The same outputs of a pytorch_spinenet module (NHWC, float64 numpy)."""
  import torch
  dtype = next(model.parameters()).dtype
  with torch.no_grad():
    out = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(dtype))
    if model.config['type'] == 'maskrcnn':
      r = torch.from_numpy(rois)
      classes, deltas = model.box_head(out['endpoints'], r)
      out = dict(out, class_outputs=classes, box_outputs=deltas,
                 mask_outputs=model.mask_head(out['endpoints'], r))
    elif model.config['type'] == 'spinenet':
      out = {'endpoints': out}
  return _flat(out, lambda x, nchw: (x.permute(0, 2, 3, 1) if nchw else x).double().numpy())


def verify(config: model_io.ModelConfig, variables: dict, path: str,
           size: tuple[int, int] = (256, 256)) -> dict[str, float]:
  """Relative L2 error of every output of the exported file against the JAX model (Mask R-CNN:
  the heads on `random_rois`)."""
  import pytorch_spinenet
  images = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  rois = random_rois(size) if isinstance(config, MaskRCNNConfig) else None
  ours = jax_outputs(config, variables, images, rois)
  theirs = torch_outputs(pytorch_spinenet.load(path), images, rois)
  return {k: float(np.linalg.norm(a - theirs[k]) / np.linalg.norm(a)) for k, a in ours.items()}


def _define_flags():
  # Defined when run as a script only, so that tests can import the functions above.
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config file to check against.',
                                  lock_config=True)
  flags.DEFINE_string('checkpoint', None, 'Model checkpoint folder (model.json + variables/).')
  flags.DEFINE_string('output', None, 'Output .safetensors file.')
  flags.DEFINE_bool('override', False, 'Export with the --config settings.')
  flags.DEFINE_bool('backbone_only', False, 'Export only the SpineNet of a detector.')
  flags.DEFINE_bool('verify', False, 'Compare the JAX and PyTorch outputs (needs torch).')
  flags.mark_flags_as_required(['checkpoint', 'output'])


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    if f.override and f.config is None:
      raise ValueError('--override needs --config')
    config, variables = export(f.checkpoint, f.output, f.config, f.override, f.backbone_only)
    print(f'wrote {f.output}')
    if f.verify:
      errors = verify(config, variables, f.output)
      print(json.dumps(errors))
      if max(errors.values()) > 1e-4:
        raise ValueError(f'PyTorch outputs differ from JAX: max relative error '
                         f'{max(errors.values()):.2e}')
  except (ValueError, OSError) as e:   # bad input: a message naming it, not a traceback
    raise SystemExit(f'convert_to_pytorch: error: {e}') from None


if __name__ == '__main__':
  _define_flags()
  app.run(main)

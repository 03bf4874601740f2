"""The PyTorch Mask R-CNN export (tools/pytorch_maskrcnn.py, tools/convert_to_pytorch.py) computes
what the JAX model computes: RoIAlign alone (float64 to 1e-12, float32, level boundaries); the
real 49S and 49 Mask R-CNNs (RPN outputs, Fast R-CNN and mask heads on RoIs at every level, tiny,
huge, on and outside the borders) in float32 and float64; the official parameter counts; the CLI
round trip with --verify, --backbone_only and --config; the single-file imports.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import ROOT, rel_l2

from spinenet_jax import model_io
from spinenet_jax.modeling import factory, layers
from spinenet_jax.modeling.maskrcnn import MaskRCNN, MaskRCNNConfig, init_inputs
from spinenet_jax.modeling.maskrcnn_heads import (FastRcnnHeadConfig, MaskHeadConfig,
                                                  RpnHeadConfig)
from spinenet_jax.modeling.spinenet import SpineNetConfig
from spinenet_jax.ops import roi_align

# One thread per xdist worker: two OpenMP threads per process on two shared cores run 10x slower.
torch.set_num_threads(1)
sys.path.append(os.path.join(ROOT, 'tools'))
import convert_to_pytorch
import pytorch_maskrcnn
import pytorch_spinenet


pytestmark = pytest.mark.usefixtures('fast_compiles')


def worst(errors, tol):
  """The errors above `tol`, for assertion messages."""
  return {k: f'{v:.1e}' for k, v in errors.items() if v > tol}


def _config_file(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# RoIAlign alone.


def pyramid(size, channels, dtype, seed=0):
  """{level: [2, ceil(H / 2^l), ceil(W / 2^l), C]}, levels 3-7, as SpineNet's endpoints."""
  rng = np.random.default_rng(seed)
  return {lv: rng.normal(size=(2, -(-size[0] // 2**lv), -(-size[1] // 2**lv), channels))
          .astype(dtype) for lv in range(3, 8)}


def torch_roi_align(features, boxes, output_size):
  """pytorch_maskrcnn.multilevel_roi_align on NHWC numpy inputs, as [B, N, S, S, C] numpy."""
  out = pytorch_maskrcnn.multilevel_roi_align(
      {lv: torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for lv, f in features.items()},
      torch.from_numpy(boxes), output_size)
  return out.permute(0, 1, 3, 4, 2).numpy()


def jax_roi_align(features, boxes, output_size):
  return np.asarray(roi_align.multilevel_roi_align(
      {lv: jnp.asarray(f) for lv, f in features.items()}, jnp.asarray(boxes), output_size))


# (200, 328): ceil-sized levels, so the bounds taken from level 3 are fractional (25 / 2 - 1 = 11.5
# at level 4, whose last row is 12).
@pytest.mark.parametrize('image', [(256, 256), (128, 384), (200, 328)])
@pytest.mark.parametrize('output_size', [7, 14])
def test_roi_align_equals_jax_float64(image, output_size):
  features = pyramid(image, 3, np.float64)
  boxes = convert_to_pytorch.random_rois(image, count=48, seed=output_size)
  with jax.enable_x64(True):
    for box_dtype in (np.float64, np.float32):   # grid in the boxes' dtype, as official
      expected = jax_roi_align(features, boxes.astype(box_dtype), output_size)
      ours = torch_roi_align(features, boxes.astype(box_dtype), output_size)
      assert ours.shape == (2, 48, output_size, output_size, 3) and ours.dtype == np.float64
      np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_roi_align_equals_jax_float32():
  image = (256, 256)
  features = pyramid(image, 8, np.float32, seed=1)
  boxes = convert_to_pytorch.random_rois(image, count=64, seed=1)
  fn = jax.jit(lambda f, b: roi_align.multilevel_roi_align(f, b, 7))
  expected = np.asarray(fn({lv: jnp.asarray(f) for lv, f in features.items()}, boxes))
  ours = torch_roi_align(features, boxes, 7)
  assert ours.dtype == np.float32
  assert rel_l2(ours, expected) < 1e-6   # measured: bit-identical (XLA's rewrites may differ)


def test_level_assignment_equals_jax_at_the_boundaries():
  """Exact squares at every level boundary (sqrt(area) = 224 * 2^k) and one float32 ulp either
  side, zero and negative areas."""
  edges = 224.0 * 2.0 ** np.arange(-3, 5)
  sides = np.concatenate([edges, np.nextafter(edges, 0, dtype=np.float32),
                          np.nextafter(edges, np.inf, dtype=np.float32), [0.0, 1.0, 5000.0]])
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
  boxes = np.concatenate([boxes, [[5, 5, 0, 10], [3, 3, 3, 90]]]).astype(np.float32)
  expected = np.asarray(roi_align.assign_levels(jnp.asarray(boxes), 3, 7))
  ours = pytorch_maskrcnn.assign_levels(torch.from_numpy(boxes), 3, 7).numpy()
  np.testing.assert_array_equal(ours, expected)
  assert list(ours[:8]) == [3, 3, 3, 4, 5, 6, 7, 7]


# The whole model.


def torch_model(config, variables):
  """The PyTorch model of `config` with JAX `variables`, mapped as the exporter maps them."""
  model = pytorch_spinenet.build_model(model_io.config_to_dict(config))
  state = convert_to_pytorch.state_dict_from_variables(variables)
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False)
  assert not unexpected and all(k.endswith('num_batches_tracked') for k in missing)
  return model.eval()


def random_variables(config, images, rois, seed):
  """JAX variables of `config`: random weights, and batch-norm statistics that fit what each norm
  sees on `images` and `rois` (measured through the PyTorch model).

  Random statistics would leave activations unnormalized and the network so badly conditioned
  that two correct float32 implementations differ by 1e-3; trained networks are not like that.
  The statistics are set norm by norm in eval mode (a hook before each norm), so that each fits
  its input under the statistics before it (train-mode statistics of 1 x 2 maps let the eval-mode
  activations grow 100-fold through the backbone). The variance is the second moment and the mean
  is off the batch's by about that scale, as a dataset's statistics are for one batch: centring
  each channel on its batch mean cancels most of every activation, and the float32 noise of
  both implementations grows to 1e-3 - 1e-2 through the backbone.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: MaskRCNN(config).init(jax.random.key(0),
                                                        *init_inputs((128, 128))))

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ('scale', 'var'):
      value = rng.uniform(0.7, 1.3, leaf.shape)
    else:
      value = rng.normal(0, 0.2, leaf.shape)
    return value.astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  model = torch_model(config, variables)

  def calibrate(bn, inputs):
    x = inputs[0].double()
    dims = [0, *range(2, x.ndim)]
    mean, var = x.mean(dims), x.square().mean(dims)
    shift = torch.from_numpy(rng.normal(0, 1.0, mean.shape)) * var.sqrt()
    bn.running_mean.copy_(mean + shift)
    bn.running_var.copy_(var * torch.from_numpy(rng.uniform(0.8, 1.25, var.shape)))

  norms = {name: m for name, m in model.named_modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
  hooks = [m.register_forward_pre_hook(calibrate) for m in norms.values()]
  with torch.no_grad():
    features = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))['endpoints']
    model.box_head(features, torch.from_numpy(rois))
    model.mask_head(features, torch.from_numpy(rois))
  for hook in hooks:
    hook.remove()
  for name, bn in norms.items():
    tree = variables['batch_stats']
    for key in name.split('.'):
      tree = tree[key]
    tree['mean'], tree['var'] = bn.running_mean.numpy(), bn.running_var.numpy()
  return variables


def model_config(name):
  return factory.maskrcnn_config(_config_file(name).model)


def check_outputs(config, variables, images, rois, dtype='float32', mask_classes=False):
  """Relative L2 error of every output; with `mask_classes` also of the mask logits for given
  classes (the detector's path), against that channel of JAX's all-class logits."""
  model = torch_model(config, variables)
  if dtype == 'float64':
    model = model.double()
  expected = convert_to_pytorch.jax_outputs(config, variables, images, rois, dtype)
  ours = convert_to_pytorch.torch_outputs(model, images, rois)
  assert sorted(ours) == sorted(expected) and len(ours) == 18
  assert expected['mask_outputs'].shape == (*rois.shape[:2], 28, 28, config.num_classes)
  errors = {k: rel_l2(ours[k], expected[k]) for k in expected}
  if mask_classes:
    classes = np.random.default_rng(0).integers(0, config.num_classes, rois.shape[:2])
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(next(model.parameters()).dtype)
    with torch.no_grad():
      chosen = model.mask_head(model.backbone(x), torch.from_numpy(rois),
                               torch.from_numpy(classes)).double().numpy()
    index = classes[..., None, None, None]
    errors['mask_of_class'] = rel_l2(
        chosen, np.take_along_axis(expected['mask_outputs'], index, -1)[..., 0])
  return errors


# Level 7 at least 2 x 2: on 1 x 1 and 1 x 2 maps the random networks' float32 noise reaches 1e-4
# at level 7 (1e-2 for 49 at 128 x 128), in JAX and PyTorch alike. Non-square: 256 x 384.
CASES = {'49S': ('maskrcnn_spinenet49s', (256, 384)), '49': ('maskrcnn_spinenet49', (256, 256))}


@pytest.mark.parametrize('model_id', list(CASES))
def test_maskrcnn_equals_jax(model_id):
  name, size = CASES[model_id]
  config = model_config(name)
  images = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  rois = convert_to_pytorch.random_rois(size, count=20, seed=1)
  variables = random_variables(config, images, rois, seed=2)
  errors = check_outputs(config, variables, images, rois)
  assert max(errors.values()) <= 1e-4, worst(errors, 1e-4)
  print(f'{model_id} {size} float32: max rel L2 {max(errors.values()):.1e} '
        f'({max(errors, key=errors.get)})')


def test_maskrcnn_equals_jax_float64():
  config = model_config('maskrcnn_spinenet49s')
  size = (128, 128)
  images = np.random.default_rng(3).normal(size=(2, *size, 3))
  rois = convert_to_pytorch.random_rois(size, count=16, seed=3)
  variables = random_variables(config, images.astype(np.float32), rois, seed=4)
  # Unoptimized, XLA's float64 convolutions take 20 s here; optimized, 1 s (+ 1 s compiling).
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    with jax.enable_x64(True):
      variables = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), variables)
      # float64 RoIs: both models run the RoIAlign grid in float32, as official.
      errors = check_outputs(config, variables, images, rois.astype(np.float64), 'float64',
                             mask_classes=True)
  finally:
    jax.config.update('jax_disable_most_optimizations', True)
  # Level 7 is 1 x 1 here, which amplifies rounding noise (see CASES): float64's reaches 4e-11; a
  # difference in the semantics is far above it.
  assert max(errors.values()) <= 1e-9, worst(errors, 1e-9)
  print(f'49S {size} float64: max rel L2 {max(errors.values()):.1e}')


@pytest.mark.parametrize('model_id, rpn_convs, expected', [
    ('49S', None, 13_946_608), ('49', None, 40_753_521), ('190', None, 176_198_465),
    ('190', 1, 168_210_497)])
def test_parameter_counts_equal_official_graphs(model_id, rpn_convs, expected):
  file = _config_file(f'maskrcnn_spinenet{model_id.lower()}')
  if rpn_convs is not None:   # the released 190 checkpoint's one-conv RPN
    file.model.rpn_head.num_convs = rpn_convs
  with torch.device('meta'):   # shapes only
    model = pytorch_spinenet.build_model(model_io.config_to_dict(
        factory.maskrcnn_config(file.model)))
  assert type(model) is pytorch_maskrcnn.MaskRCNN
  assert sum(p.numel() for p in model.parameters()) == expected


SMALL = MaskRCNNConfig(
    SpineNetConfig.from_model_id('49', filter_size_scale=0.25, activation='relu',
                                 norm=layers.NormConfig(momentum=0.99, epsilon=1e-3)),
    RpnHeadConfig(num_convs=2, num_filters=16), FastRcnnHeadConfig(1, 16, 1, 32),
    MaskHeadConfig(1, 16), num_classes=5)


def test_cli_round_trip(tmp_path):
  size = (256, 256)   # the tool's --verify size
  images = np.random.default_rng(5).normal(size=(2, *size, 3)).astype(np.float32)
  variables = random_variables(SMALL, images, convert_to_pytorch.random_rois(size), seed=5)
  folder, output = str(tmp_path / 'model'), str(tmp_path / 'model.safetensors')
  model_io.save_model(folder, SMALL, variables, info={'note': 'test'})
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'convert_to_pytorch.py'),
       f'--checkpoint={folder}', f'--output={output}', '--verify'],
      check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1', OMP_NUM_THREADS='1'))
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.strip().splitlines()[-1])   # JAX vs PyTorch, in the tool
  assert len(errors) == 18 and max(errors.values()) < 1e-4, errors
  assert {'rpn_scores/7', 'rpn_boxes/3', 'class_outputs', 'mask_outputs'} <= set(errors)
  meta = pytorch_spinenet.read_metadata(output)
  assert meta['config'] == json.loads(json.dumps(model_io.config_to_dict(SMALL)))
  loaded = pytorch_maskrcnn.load(output)
  assert type(loaded) is pytorch_maskrcnn.MaskRCNN and not loaded.training
  direct = torch_model(SMALL, variables).state_dict()
  assert sorted(loaded.state_dict()) == sorted(direct)
  for key, value in loaded.state_dict().items():
    assert torch.equal(value, direct[key]), key

  backbone_file = str(tmp_path / 'backbone.safetensors')
  convert_to_pytorch.export(folder, backbone_file, backbone_only=True)
  backbone = pytorch_spinenet.load(backbone_file)
  assert type(backbone) is pytorch_spinenet.SpineNet
  x = torch.from_numpy(images[:, :128, :128].transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    expected = loaded(x)['endpoints']
    for level, y in backbone(x).items():
      assert torch.equal(y, expected[level])


def test_config_check(tmp_path):
  variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: MaskRCNN(SMALL).init(jax.random.key(0), *init_inputs((128, 128)))))
  file = _config_file('maskrcnn_spinenet49')
  file.model.backbone.filter_size_scale = 0.25
  file.model.rpn_head.num_convs, file.model.rpn_head.num_filters = 2, 16
  file.model.frcnn_head.update(num_convs=1, num_filters=16, fc_dims=32)
  file.model.mask_head.update(num_convs=1, num_filters=16)
  file.model.num_classes = 5
  output = str(tmp_path / 'a.safetensors')
  convert_to_pytorch.export_model(SMALL, variables, output, {}, file)   # equal where it matters
  file.model.frcnn_head.fc_dims = 64
  with pytest.raises(ValueError, match=r'frcnn_head.fc_dims: checkpoint 32, config 64'):
    convert_to_pytorch.export_model(SMALL, variables, output, {}, file)
  with pytest.raises(ValueError, match='do not fit'):
    convert_to_pytorch.export_model(SMALL, variables, output, {}, file, override=True)


def test_single_files_import_without_jax(tmp_path):
  """pytorch_spinenet.py builds a Mask R-CNN through its sibling on sys.path or in a package of
  the user's, needs no jax, and says what is missing without the sibling."""
  package, alone = tmp_path / 'mypackage', tmp_path / 'alone'
  package.mkdir()
  alone.mkdir()
  (package / '__init__.py').write_text('')
  for name in ('pytorch_spinenet.py', 'pytorch_maskrcnn.py'):
    shutil.copy(os.path.join(ROOT, 'tools', name), package / name)
  shutil.copy(os.path.join(ROOT, 'tools', 'pytorch_spinenet.py'), alone / 'pytorch_spinenet.py')
  config = json.dumps({'type': 'maskrcnn', 'backbone': {'filter_size_scale': 0.25},
                       'rpn_head': {'num_filters': 8}, 'num_classes': 3})
  code = f'''
import sys
config = {config}
sys.path.insert(0, {str(tmp_path)!r})
import mypackage.pytorch_spinenet as p
m = p.build_model(config)
assert type(m).__module__ == 'mypackage.pytorch_maskrcnn', type(m)
sys.path.insert(0, {str(alone)!r})
import pytorch_spinenet
try:
  pytorch_spinenet.build_model(config)
  raise AssertionError('built without pytorch_maskrcnn.py')
except ValueError as e:
  assert 'pytorch_maskrcnn.py' in str(e), e
sys.path.insert(0, {os.path.join(ROOT, 'tools')!r})
import pytorch_maskrcnn
assert type(pytorch_maskrcnn.build_model(config)) is pytorch_maskrcnn.MaskRCNN
bad = [n for n in ('jax', 'flax', 'tensorflow') if n in sys.modules]
assert not bad, bad
'''
  result = subprocess.run([sys.executable, '-c', code], check=False, capture_output=True,
                          text=True, cwd=str(tmp_path), timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=''))
  assert result.returncode == 0, result.stderr[-2000:]

"""The PyTorch export (tools/pytorch_spinenet.py, tools/convert_to_pytorch.py) computes what the JAX
model computes: every model id, both conv paddings and resample poolings, square, non-square and odd
inputs, all norm types; the CLI round trip; the loader's refusal of pickles; TF -> JAX -> PyTorch.
"""

import importlib.util
import json
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from conftest import DATA, ROOT, rel_l2

from spinenet_jax import model_io
from spinenet_jax.interop import convert, tf_checkpoint
from spinenet_jax.modeling import block_specs as bs
from spinenet_jax.modeling import layers, topology
from spinenet_jax.modeling.retinanet import HeadConfig, RetinaNet, RetinaNetConfig
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig

# One thread per xdist worker: two OpenMP threads per process on two shared cores run 10x slower.
torch.set_num_threads(1)
sys.path.append(os.path.join(ROOT, 'tools'))
import convert_to_pytorch
import pytorch_spinenet

GARDEN = os.path.join(DATA, 'model_garden')


pytestmark = pytest.mark.usefixtures('fast_compiles')


def assert_close(actual, expected, tol, errors=None):
  assert sorted(actual) == sorted(expected)
  for key in expected:
    err = rel_l2(actual[key], expected[key])
    assert err <= tol, (key, err)
    if errors is not None:
      errors[key] = err


def images_of(size, seed=0):
  return np.random.default_rng(seed).normal(size=(2, *size, 3)).astype(np.float32)


def nchw(images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _named(endpoints, heads, fn):
  out = {f'level{k}': fn(v) for k, v in endpoints.items()}
  out.update({f'class_level{k}': fn(v) for k, v in heads['cls_outputs'].items()})
  out.update({f'box_level{k}': fn(v) for k, v in heads['box_outputs'].items()})
  return out


def jax_outputs(config, variables, images):
  """{'level3': endpoints, ..., 'class_level3': ..., 'box_level3': ...} of one jitted RetinaNet."""
  def capture(module, method):
    return isinstance(module, SpineNet) and method == '__call__'
  fn = jax.jit(lambda v, x: RetinaNet(config).apply(v, x, capture_intermediates=capture,
                                                    mutable=['intermediates']))
  heads, state = fn(variables, images)
  (endpoints,) = state['intermediates']['backbone']['__call__']
  return _named(endpoints, heads, np.asarray)


def torch_outputs(model, images):
  """The same names, from a PyTorch RetinaNet, in NHWC."""
  with torch.no_grad():
    endpoints = model.backbone(nchw(images).to(next(model.parameters()).dtype))
    heads = dict(zip(('cls_outputs', 'box_outputs'), model.head(endpoints)))
  return _named(endpoints, heads, lambda x: x.permute(0, 2, 3, 1).double().numpy())


def torch_model(config, variables):
  """The PyTorch model of `config` with JAX `variables`, mapped as the exporter maps them."""
  model = pytorch_spinenet.build_model(model_io.config_to_dict(config))
  state = convert_to_pytorch.state_dict_from_variables(variables)
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False)
  assert not unexpected and all(k.endswith('num_batches_tracked') for k in missing)
  return model.eval()


def random_variables(config, images, seed):
  """JAX variables of `config` with random weights and the batch-norm statistics of `images`
  (perturbed), filled through the PyTorch model (no JAX init to trace).

  Random statistics would leave activations unnormalized and the network so badly conditioned
  that two correct float32 implementations differ by 1e-3; trained networks are not like that.
  """
  model = pytorch_spinenet.build_model(model_io.config_to_dict(config))
  rng = np.random.default_rng(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 4:
        value = rng.normal(size=p.shape) / np.sqrt(np.prod(p.shape[1:]))
      elif name.endswith(('.weight', '.v')):
        value = rng.uniform(0.7, 1.3, p.shape)
      else:
        value = rng.normal(0, 0.2, p.shape)
      p.copy_(torch.from_numpy(value))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
      bn.momentum = 1.0   # running statistics := this batch's
    model.train()(nchw(images))
    for bn in norms:
      std = bn.running_var.sqrt().numpy()
      bn.running_mean += torch.from_numpy(0.1 * std * rng.normal(size=std.shape)).float()
      bn.running_var *= torch.from_numpy(rng.uniform(0.8, 1.25, std.shape)).float()
  params, stats = {}, {}
  for key, value in model.state_dict().items():
    *path, leaf = key.split('.')
    value = value.numpy()
    if leaf == 'num_batches_tracked':
      continue
    if leaf == 'weight':
      leaf, value = ('kernel', value.transpose(2, 3, 1, 0)) if value.ndim == 4 else ('scale', value)
    tree = stats if leaf.startswith('running_') else params
    for name in path:
      tree = tree.setdefault(name, {})
    tree[leaf.removeprefix('running_')] = np.ascontiguousarray(value)
  return {'params': params, 'batch_stats': stats} if stats else {'params': params}


def case_config(model_id, padding, pooling, activation, backbone_norm='batch', head_norm=None,
                separable=False):
  """`model_id`'s block repeats, resample alpha, endpoint width (49S: 256, as released) and head
  depth, filter_size_scale a quarter of its own (49S: int truncation to 10/20/41 filters)."""
  scaling = bs.scaling_for(model_id)
  # Few groups: at 128x128 input level 7 is 1x1, and a group of 2 values is noise.
  def norm(kind):
    return layers.NormConfig(type=kind, epsilon=1e-3, groups=4)

  endpoints = 256 if model_id == '49S' else scaling.endpoints_num_filters
  backbone = SpineNetConfig.from_model_id(
      model_id, filter_size_scale=scaling.filter_size_scale / 4, endpoints_num_filters=endpoints,
      conv_padding=padding, resample_pooling=pooling, activation=activation,
      norm=norm(backbone_norm))
  head = HeadConfig(num_convs=convert.OFFICIAL_HEADS[model_id][0], num_filters=16, num_classes=5,
                    separable_conv=separable, norm=norm(head_norm) if head_norm else None)
  return RetinaNetConfig(backbone, head)


# Every model id. Together: both paddings and both poolings on square and non-square inputs
# (129x131: odd sizes, so asymmetric SAME pads; non-integer resampling ratios, so legacy resizes),
# batch norm, GroupNorm and EvoNorm-S0 in the backbone and the head, plain and separable head convs.
# (Non-square inputs must be multiples of 128: others cannot build SpineNet, in JAX either.)
CASES = {
    '49S': ((128, 128), 'fixed', 'official', 'relu'),
    '49': ((128, 256), 'same', 'model_garden', 'swish', 'group', 'evonorm_s0', True),
    '96': ((256, 128), 'fixed', 'model_garden', 'relu', 'evonorm_s0', 'group'),
    '143': ((129, 131), 'same', 'official', 'swish'),
    '190': ((128, 128), 'same', 'model_garden', 'swish'),
}


@pytest.mark.parametrize('model_id', list(CASES))
def test_pytorch_equals_jax(model_id):
  size, *settings = CASES[model_id]
  config = case_config(model_id, *settings)
  images = images_of(size)
  variables = random_variables(config, images, seed=1)
  errors = {}
  assert_close(torch_outputs(torch_model(config, variables), images),
               jax_outputs(config, variables, images), 1e-4, errors)
  print(f'{model_id} {CASES[model_id]}: max rel L2 {max(errors.values()):.1e}')


# Trainable parameters of the official TF graphs (RetinaNet yamls, 91 classes).
OFFICIAL_RETINANET_PARAMS = {'49S': 11_265_942, '49': 28_543_383, '96': 42_974_871,
                             '143': 66_959_511, '190': 163_637_351}


def test_parameter_counts_equal_official_graphs():
  for model_id, count in OFFICIAL_RETINANET_PARAMS.items():
    config = convert.model_config('tf1', model_id)
    with torch.device('meta'):   # shapes only
      model = pytorch_spinenet.build_model(model_io.config_to_dict(config))
    assert sum(p.numel() for p in model.parameters()) == count, model_id


def test_resampling_arithmetic_equals_jax():
  for n_in in range(1, 70):
    for n_out in range(1, 70):
      np.testing.assert_array_equal(pytorch_spinenet.legacy_nearest_indices(n_in, n_out).numpy(),
                                    layers.legacy_nearest_indices(n_in, n_out))
      for mode in topology.RESAMPLE_POOLINGS:
        if n_in > n_out:
          assert (pytorch_spinenet.downsample_pools(n_in, n_out, mode) ==
                  topology.downsample_pools(n_in, n_out, mode))


SMALL = RetinaNetConfig(SpineNetConfig.from_model_id('49', filter_size_scale=0.25,
                                                     conv_padding='same'),
                        HeadConfig(num_convs=1, num_filters=16, num_classes=5))


def test_cli_round_trip(tmp_path):
  variables = random_variables(SMALL, images_of((128, 128), seed=3), seed=3)
  folder, output = str(tmp_path / 'model'), str(tmp_path / 'model.safetensors')
  model_io.save_model(folder, SMALL, variables, info={'note': 'test'})
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'convert_to_pytorch.py'),
       f'--checkpoint={folder}', f'--output={output}', '--verify'],
      check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1', OMP_NUM_THREADS='1'))
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.strip().splitlines()[-1])   # JAX vs PyTorch, in the tool
  assert len(errors) == 10 and max(errors.values()) < 1e-4, errors
  meta = pytorch_spinenet.read_metadata(output)
  assert meta['config'] == json.loads(json.dumps(model_io.config_to_dict(SMALL)))
  assert meta['info']['note'] == 'test' and meta['info']['exported_from'] == folder
  loaded = pytorch_spinenet.load(output)
  assert not loaded.training
  direct, loaded_state = torch_model(SMALL, variables), loaded.state_dict()
  for key, value in direct.state_dict().items():
    assert torch.equal(loaded_state[key], value), key
  images = images_of((128, 128), seed=4)
  assert_close(torch_outputs(loaded, images), torch_outputs(direct, images), 0.0)


def _config_file(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_config_check_override_and_backbone_only(tmp_path):
  variables = random_variables(SMALL, images_of((128, 128), seed=5), seed=5)
  file = _config_file('spinenet49')
  b, h = file.model.backbone, file.model.head
  b.filter_size_scale, b.conv_padding, b.init_drop_connect_rate = 0.25, 'same', 0.2
  h.num_convs, h.num_filters, h.num_classes = 1, 16, 5
  file.model.anchors.anchor_size = 4.0
  output = str(tmp_path / 'a.safetensors')
  export = convert_to_pytorch.export_model
  export(SMALL, variables, output, {}, file)   # equal wherever it matters at inference
  b.conv_padding = 'fixed'
  with pytest.raises(ValueError, match=r"backbone.conv_padding: checkpoint 'same', config 'fixed'"):
    export(SMALL, variables, output, {}, file)
  export(SMALL, variables, output, {}, file, override=True)
  assert pytorch_spinenet.read_metadata(output)['config']['backbone']['conv_padding'] == 'fixed'
  b.filter_size_scale = 0.5
  with pytest.raises(ValueError, match='do not fit'):
    export(SMALL, variables, output, {}, file, override=True)

  backbone_file = str(tmp_path / 'backbone.safetensors')
  export(*convert_to_pytorch.backbone_of(SMALL, variables), backbone_file, {})
  backbone, full = pytorch_spinenet.load(backbone_file), torch_model(SMALL, variables)
  assert type(backbone) is pytorch_spinenet.SpineNet
  x = nchw(images_of((128, 128)))
  with torch.no_grad():
    expected = full.backbone(x)
    for level, y in backbone(x).items():
      assert torch.equal(y, expected[level])


class _Evil:
  def __reduce__(self):
    return (open, (os.environ['EVIL_MARKER'], 'w'))


def test_loader_refuses_pickles_and_foreign_files(tmp_path, monkeypatch):
  marker = tmp_path / 'unpickled'
  monkeypatch.setenv('EVIL_MARKER', str(marker))
  pickled = tmp_path / 'evil.safetensors'
  pickled.write_bytes(pickle.dumps({'stem.conv.weight': _Evil()}))
  torch_file = tmp_path / 'weights.pt'
  torch.save({'stem.conv.weight': torch.zeros(1)}, torch_file)
  plain = tmp_path / 'plain.safetensors'
  from safetensors.numpy import save_file
  save_file({'stem.conv.weight': np.zeros(1, np.float32)}, str(plain))
  for path in (pickled, torch_file):
    with pytest.raises(ValueError, match='not a safetensors file'):
      pytorch_spinenet.load(str(path))
  with pytest.raises(ValueError, match='metadata'):
    pytorch_spinenet.load(str(plain))
  assert not marker.exists()
  assert convert_to_pytorch.FORMAT == pytorch_spinenet.FORMAT


def test_pytorch_module_imports_without_jax():
  code = ('import sys; sys.path.insert(0, "tools"); import pytorch_spinenet as p; '
          'm = p.build_model({"type": "spinenet", "backbone": {"filter_size_scale": 0.25}}); '
          'bad = [n for n in ("jax", "flax", "tensorflow") if n in sys.modules]; '
          'assert not bad, bad')
  result = subprocess.run([sys.executable, '-c', code], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
  assert result.returncode == 0, result.stderr[-2000:]


def test_tf_model_garden_to_pytorch(tmp_path):
  # TF Model Garden (an independent implementation; float64 goldens) -> JAX checkpoint -> PyTorch.
  for name in ('swish_r1', 'relu_r2'):
    folder = os.path.join(GARDEN, f'golden_{name}')
    with open(os.path.join(folder, 'settings.json')) as f:
      s = json.load(f)
    backbone = SpineNetConfig(
        filter_size_scale=s['filter_size_scale'], resample_alpha=s['resample_alpha'],
        block_repeats=s['block_repeats'], endpoints_num_filters=s['endpoints_num_filters'],
        activation=s['activation'], conv_padding='same', resample_pooling='model_garden',
        norm=layers.NormConfig(momentum=s['norm_momentum'], epsilon=s['norm_epsilon']))
    tensors = tf_checkpoint.read_tf_checkpoint(os.path.join(folder, 'ckpt'))
    config, variables, _ = convert.convert(
        'tf2', tensors, RetinaNetConfig(backbone, HeadConfig(**s['head'])), keep_dtype=True,
        detect_endpoints=False)
    io = dict(np.load(os.path.join(folder, 'io.npz')))
    expected = {k[len('infer_'):]: v for k, v in io.items() if k.startswith('infer_')}
    for dtype, tol in (('float64', 1e-9), ('float32', 1e-4)):
      path = str(tmp_path / f'{name}_{dtype}.safetensors')
      convert_to_pytorch.write(path, config, jax.tree_util.tree_map(
          lambda v: np.asarray(v, dtype), variables), {})  # noqa: B023
      model = pytorch_spinenet.load(path)
      assert next(model.parameters()).dtype == getattr(torch, dtype)
      errors = {}
      assert_close(torch_outputs(model, io['images'].astype(dtype)), expected, tol, errors)
      print(f'{name} {dtype}: max rel L2 {max(errors.values()):.1e}')

"""TF Model Garden checkpoints: name coverage for every model id and numerical equivalence.

The golden files in tests/data/model_garden were written by tools/make_tf_goldens.py with
tf-models-official 2.20.0 (an independent SpineNet implementation) in float64.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA, name_shapes, rel_l2
from spinenet_jax.interop import convert
from spinenet_jax.interop import tf_checkpoint
from spinenet_jax.interop.tf2_names import spinenet_tf2_names
from spinenet_jax.modeling import layers
from spinenet_jax.modeling.retinanet import HeadConfig, RetinaNet, RetinaNetConfig
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig

GARDEN = os.path.join(DATA, 'model_garden')
GOLDENS = sorted(d[len('golden_'):] for d in os.listdir(GARDEN) if d.startswith('golden_'))


@pytest.mark.parametrize('model_id', ['49S', '49', '96', '143', '190'])
def test_tf2_names_cover_model_garden_backbone(model_id):
  official = {}
  with open(os.path.join(GARDEN, f'keys_spinenet{model_id}.txt')) as f:
    for line in f:
      name, shape = re.match(r'(\S+) \[([\d, ]*)\]', line).groups()
      official[name] = tuple(int(v) for v in shape.split(',') if v.strip())
  config = convert.model_config('tf2', model_id).backbone
  variables = convert.abstract_variables(config)
  names = spinenet_tf2_names(variables['params'], config)
  assert name_shapes(names, variables) == official


def _golden(name, num_classes=None):
  """(config, variables, report, io) of a golden; `num_classes` replaces the head's in the config
  passed to the converter (the checkpoint's count should win)."""
  folder = os.path.join(GARDEN, f'golden_{name}')
  with open(os.path.join(folder, 'settings.json')) as f:
    settings = json.load(f)
  backbone = SpineNetConfig(
      filter_size_scale=settings['filter_size_scale'], resample_alpha=settings['resample_alpha'],
      block_repeats=settings['block_repeats'],
      endpoints_num_filters=settings['endpoints_num_filters'], activation=settings['activation'],
      conv_padding='same', resample_pooling='model_garden',
      norm=layers.NormConfig(momentum=settings['norm_momentum'], epsilon=settings['norm_epsilon']))
  head = dict(settings['head'], **({} if num_classes is None else {'num_classes': num_classes}))
  config = RetinaNetConfig(backbone, HeadConfig(**head))
  tensors = tf_checkpoint.read_tf_checkpoint(os.path.join(folder, 'ckpt'))
  config, variables, report = convert.convert('tf2', tensors, config, keep_dtype=True)
  io = dict(np.load(os.path.join(folder, 'io.npz')))
  return config, variables, report, io


def _run(config, variables, images, train, dtype):
  """Endpoints and raw head outputs: {'level3': ..., 'class_level3': ..., 'box_level3': ...}."""
  cast = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), variables)
  x = jnp.asarray(images, dtype)
  mutable = ['batch_stats'] if train else False
  backbone_vars = {c: v['backbone'] for c, v in cast.items()}
  endpoints = SpineNet(config.backbone, dtype=dtype).apply(backbone_vars, x, train, mutable=mutable)
  heads = RetinaNet(config, dtype=dtype).apply(cast, x, train, mutable=mutable)
  if train:
    endpoints, heads = endpoints[0], heads[0]
  out = {f'level{k}': np.asarray(v) for k, v in endpoints.items()}
  out.update({f'class_level{k}': np.asarray(v) for k, v in heads['cls_outputs'].items()})
  out.update({f'box_level{k}': np.asarray(v) for k, v in heads['box_outputs'].items()})
  return out


OUTPUTS = [f'{kind}level{level}' for kind in ('', 'class_', 'box_') for level in range(3, 8)]


@pytest.mark.parametrize('name', GOLDENS)
@pytest.mark.parametrize('train', [False, True], ids=['inference', 'training'])
def test_equals_model_garden_in_float64(name, train):
  config, variables, report, io = _golden(name)
  assert report['ignored'] == 1          # global_step
  assert report['mapped'] == len(jax.tree_util.tree_leaves(variables))
  with jax.enable_x64(True):
    out = _run(config, variables, io['images'], train, jnp.float64)
  mode = 'train' if train else 'infer'
  for key in OUTPUTS:
    err = rel_l2(out[key], io[f'{mode}_{key}'])
    assert err < 1e-9, (key, err)   # float64 noise is ~1e-13; any semantic slip is >> 1e-4


@pytest.mark.parametrize('name', GOLDENS)
def test_equals_model_garden_in_float32(name):
  config, variables, _, io = _golden(name)
  out = _run(config, variables, io['images'], False, jnp.float32)
  for key in OUTPUTS:
    assert rel_l2(out[key], io[f'infer_{key}']) < 1e-4, key


def test_official_padding_and_pooling_are_not_model_garden():
  # The comparison can fail: the official TPU choices change the outputs of the same weights.
  import dataclasses
  config, variables, _, io = _golden(GOLDENS[0])
  with jax.enable_x64(True):
    for change in (dict(conv_padding='fixed'), dict(resample_pooling='official')):
      changed = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, **change))
      out = _run(changed, variables, io['images'], False, jnp.float64)
      errors = [rel_l2(out[f'level{level}'], io[f'infer_level{level}']) for level in range(3, 8)]
      assert max(errors) > 1e-3, (change, errors)


def test_model_only_checkpoint_prefix_is_detected():
  from spinenet_jax.interop import tf2_names
  assert tf2_names.detect_prefix(['model/_backbone/layer_with_weights-0/kernel/.ATTRIBUTES/'
                                  'VARIABLE_VALUE', 'model/_head/x']) == 'model/_backbone'
  with pytest.raises(ValueError, match='no Model Garden SpineNet backbone'):
    tf2_names.detect_prefix(['spinenet/conv2d/kernel'])


def test_class_count_is_read_from_the_model_garden_classifier():
  name = GOLDENS[0]
  with open(os.path.join(GARDEN, f'golden_{name}', 'settings.json')) as f:
    classes = json.load(f)['head']['num_classes']
  config, variables, report, _ = _golden(name, num_classes=91)
  assert config.head.num_classes == classes == report['num_classes'] != 91
  kernel = variables['params']['head']['class_predict']['conv']['kernel']
  assert kernel.shape[-1] == 9 * classes
  with pytest.raises(ValueError, match=rf'num_classes=91 \(--num_classes\) disagrees with the '
                     rf'checkpoint: class head head/_classifier/kernel.* {classes} classes'):
    convert.convert('tf2', tf_checkpoint.read_tf_checkpoint(
        os.path.join(GARDEN, f'golden_{name}', 'ckpt')), config, num_classes=91)

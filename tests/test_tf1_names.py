"""The TF1 name mapping covers every backbone variable of the official graphs, shape for shape."""

import os
import re

import jax
import jax.numpy as jnp
import pytest

from conftest import DATA, name_shapes
from spinenet_jax.interop.tf1_names import spinenet_tf1_names
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig


def official_variables(model_id, prefix='spinenet/'):
  """{name: shape} of the official TF1 graph (tests/data/official), restricted to `prefix`."""
  out = {}
  path = os.path.join(DATA, 'official', f'spinenet{model_id}_retinanet_vars.txt')
  with open(path) as f:
    for line in f:
      m = re.match(r'(\S+):0 \[([\d, ]*)\]', line)
      if m and m.group(1).startswith(prefix):
        out[m.group(1)] = tuple(int(v) for v in m.group(2).split(',') if v.strip())
  return out


@pytest.mark.parametrize('model_id', ['49S', '49', '96', '143', '190'])
def test_tf1_names_cover_official_backbone(model_id):
  model = SpineNet(SpineNetConfig.from_model_id(model_id))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))
  names = spinenet_tf1_names(variables['params'])
  ours = name_shapes(names, variables)
  official = official_variables(model_id)
  assert set(ours) == set(official)
  assert ours == official
  # Every variable of the model is named exactly once.
  n_leaves = sum(len(jax.tree_util.tree_leaves(variables[c])) for c in ('params', 'batch_stats'))
  assert len(names) == n_leaves == len(set(names.values()))


def test_endpoint_and_example_names():
  model = SpineNet(SpineNetConfig.from_model_id('49'))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))
  names = spinenet_tf1_names(variables['params'])
  assert names['spinenet/conv2d_8/kernel'] == ('params', ('endpoint_3', 'conv', 'kernel'))
  assert names['spinenet/conv2d_1/kernel'] == (
      'params', ('stem_group_0', 'block_0', 'projection', 'conv', 'kernel'))
  assert names['spinenet/sub_policy13/resample_with_alpha_resample_13_0/conv2d_1/kernel'] == (
      'params', ('block_13', 'resample_0', 'downsample', 'conv', 'kernel'))
  assert names['spinenet/sub_policy14/scale_permuted_block_16/batch_normalization_2/moving_variance'] == (
      'batch_stats', ('block_14', 'group', 'block_0', 'conv_2', 'norm', 'bn', 'var'))

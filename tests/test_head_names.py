"""Head checkpoint names cover the official TF1 graphs and Model Garden, for all five model ids."""

import os
import re

import pytest

from conftest import DATA, name_shapes
from spinenet_jax.interop import convert
from spinenet_jax.interop import head_names
from test_tf1_names import official_variables

MODEL_IDS = ['49S', '49', '96', '143', '190']


@pytest.mark.parametrize('model_id', MODEL_IDS)
def test_tf1_names_cover_the_official_retinanet(model_id):
  config = convert.model_config('tf1', model_id)
  variables = convert.abstract_variables(config)
  ours = name_shapes(head_names.head_tf1_names(variables['params']), variables)
  official = {k: v for k, v in official_variables(model_id, prefix='').items()
              if k.startswith('retinanet/')}
  assert ours == official


@pytest.mark.parametrize('model_id', MODEL_IDS)
def test_tf2_names_cover_the_model_garden_head(model_id):
  official = {}
  with open(os.path.join(DATA, 'model_garden', f'keys_head{model_id}.txt')) as f:
    for line in f:
      name, shape = re.match(r'(\S+) \[([\d, ]*)\]', line).groups()
      official[name] = tuple(int(v) for v in shape.split(',') if v.strip())
  config = convert.model_config('tf2', model_id)
  variables = convert.abstract_variables(config)
  assert name_shapes(head_names.head_tf2_names(variables['params']), variables) == official


def test_separable_head_names():
  import dataclasses
  from spinenet_jax.modeling.retinanet import HeadConfig
  config = convert.model_config('tf1', '49S')
  config = dataclasses.replace(config, head=HeadConfig(num_filters=16, separable_conv=True))
  params = convert.abstract_variables(config)['params']
  names = head_names.head_tf1_names(params)
  assert names['retinanet/class_net/class-0/depthwise_kernel'] == (
      'params', ('head', 'class_conv_0', 'depthwise', 'kernel'))
  assert names['retinanet/box_net/box-predict/bias'] == ('params', ('head', 'box_predict', 'pointwise', 'bias'))
  transforms = head_names.depthwise_transforms(names)
  import numpy as np
  assert transforms['retinanet/class_net/class-0/depthwise_kernel'](np.zeros((3, 3, 128, 1))).shape == (
      3, 3, 1, 128)

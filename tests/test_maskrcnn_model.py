"""Mask R-CNN model: trainable parameters equal the official graph's for every yaml, the heads'
shapes, names and the TF transposed-conv kernel layout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax.modeling import layers
from spinenet_jax.modeling.maskrcnn import MaskRCNN, MaskRCNNConfig, mask_anchor_config
from spinenet_jax.modeling.maskrcnn_heads import (FastRcnnHeadConfig, MaskHead, MaskHeadConfig,
                                                  RpnHeadConfig)
from spinenet_jax.modeling.spinenet import SpineNetConfig

NORM = layers.NormConfig(momentum=0.99, epsilon=1e-3)


def yaml_config(model_id: str, rpn_convs: int | None = None) -> MaskRCNNConfig:
  """The official spinenet*_mrcnn.yaml model settings."""
  backbone = SpineNetConfig.from_model_id(model_id, norm=NORM,
                                          activation='swish' if model_id == '190' else 'relu')
  if model_id == '49S':
    heads = dict(rpn_head=RpnHeadConfig(num_filters=128),
                 frcnn_head=FastRcnnHeadConfig(num_filters=128, fc_dims=512),
                 mask_head=MaskHeadConfig(num_filters=128))
  elif model_id == '190':
    heads = dict(rpn_head=RpnHeadConfig(num_convs=rpn_convs or 7, num_filters=384),
                 frcnn_head=FastRcnnHeadConfig(num_convs=7, num_filters=384),
                 mask_head=MaskHeadConfig(num_convs=7, num_filters=384))
  else:
    heads = {}
  return MaskRCNNConfig(backbone=backbone, anchors=mask_anchor_config(
      anchor_size=5.0 if model_id == '190' else 3.0), **heads)


def count(config: MaskRCNNConfig, size: int = 256) -> tuple[int, dict]:
  images = jnp.zeros((1, size, size, 3))
  rois = jnp.array([[[0.0, 0.0, 64.0, 64.0]]])
  shapes = jax.eval_shape(lambda: MaskRCNN(config).init(
      jax.random.key(0), images, rois, rois, jnp.zeros((1, 1), jnp.int32)))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes['params'])), shapes


@pytest.mark.parametrize('model_id, rpn_convs, expected', [
    ('49S', None, 13_946_608), ('49', None, 40_753_521), ('96', None, 55_185_009),
    ('143', None, 79_169_649), ('190', None, 176_198_465), ('190', 1, 168_210_497)])
def test_parameters_equal_the_official_graph(model_id, rpn_convs, expected):
  assert count(yaml_config(model_id, rpn_convs))[0] == expected


def test_head_variables_are_the_official_list():
  """SpineNet-49 heads: each official heads variable (rpn 1 conv, 4 convs + 1 FC, BN) has one
  counterpart of the same shape (TF1 list in the reference: 18,922,033 trainable)."""
  _, shapes = count(yaml_config('49'))
  params = {k: v for k, v in shapes['params'].items() if k != 'backbone'}
  flat = {'/'.join(str(k.key) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert sum(int(np.prod(s)) for s in flat.values()) == 18_922_033
  assert flat['rpn/rpn/kernel'] == (3, 3, 256, 256)
  assert flat['rpn/rpn_l5_bn/bn/scale'] == (256,)
  assert flat['rpn/rpn_class/kernel'] == (1, 1, 256, 3)
  assert flat['rpn/rpn_box/kernel'] == (1, 1, 256, 12)
  assert flat['frcnn/fc6/kernel'] == (12544, 1024)
  assert flat['frcnn/box_predict/kernel'] == (1024, 364)
  assert flat['mask/conv5_mask/kernel'] == (2, 2, 256, 256)
  assert flat['mask/mask_fcn_logits/kernel'] == (1, 1, 256, 91)


def test_transposed_conv_uses_the_tf_kernel_layout():
  """out[2i + a, 2j + b, c] = sum_o W[a, b, c, o] x[i, j, o] + bias (TF conv2d_transpose)."""
  head = MaskHead(MaskHeadConfig(num_convs=0, num_filters=3), num_classes=2, activation='relu',
                  norm=NORM)
  x = jax.random.normal(jax.random.key(1), (1, 1, 2, 2, 4))
  variables = head.init(jax.random.key(2), x, jnp.zeros((1, 1), jnp.int32))
  kernel = np.asarray(variables['params']['conv5_mask']['kernel'])          # [2, 2, out, in]
  bias = np.asarray(variables['params']['conv5_mask']['bias'])
  conv = nn.ConvTranspose(3, (2, 2), strides=(2, 2), padding='VALID', transpose_kernel=True)
  y = np.asarray(conv.apply({'params': {'kernel': kernel, 'bias': bias}}, x[0]))
  xs = np.asarray(x[0])
  expected = np.zeros((1, 4, 4, 3))
  for i in range(2):
    for j in range(2):
      for a in range(2):
        for b in range(2):
          expected[0, 2 * i + a, 2 * j + b] = kernel[a, b] @ xs[0, i, j] + bias
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_mask_head_returns_each_rois_class_channel():
  head = MaskHead(MaskHeadConfig(num_convs=1, num_filters=8), num_classes=5, activation='relu',
                  norm=NORM)
  crops = jax.random.normal(jax.random.key(3), (2, 3, 14, 14, 4))
  classes = jnp.array([[0, 4, 2], [1, 1, 3]])
  variables = head.init(jax.random.key(4), crops, classes)
  out = head.apply(variables, crops, classes)
  assert out.shape == (2, 3, 28, 28)
  for c in range(5):       # every channel: the same logits with all RoIs of class c
    all_c = head.apply(variables, crops, jnp.full_like(classes, c))
    np.testing.assert_array_equal(np.asarray(out)[np.asarray(classes) == c],
                                  np.asarray(all_c)[np.asarray(classes) == c])


# MODEL_ZOO's Mask R-CNN "FLOPs" (B): multiply-adds per image at inference, the released models
# (190: the one-conv RPN of its checkpoint).
MODEL_ZOO_GMACS = {'49': 215.7, '96': 314.6, '143': 498.4, '190': 1685.7}


@pytest.mark.parametrize('model_id', ['49', '96', '143', '190'])
def test_multiply_adds_match_model_zoo(model_id):
  """MODEL_ZOO counts the backbone and RPN, the Fast R-CNN head on 1000 proposals and the mask
  head on 100 detections, the transposed conv by its real taps (not the zeros of its dilation)."""
  import importlib

  from spinenet_jax.detectors import base as detectors
  config = importlib.import_module(f'configs.maskrcnn_spinenet{model_id}').get_config()
  if model_id == '190':
    config.model.rpn_head.num_convs = 1
  result = detectors.build(config).summary(tuple(config.input.image_size))
  assert result['gmacs'] == pytest.approx(MODEL_ZOO_GMACS[model_id], rel=0.005)
  if model_id == '49':
    # By hand, per RoI: 4 convs 3x3x256x256 at 7x7, FC 12544 -> 1024, class 91 and box 364.
    box = 4 * 49 * 9 * 256 * 256 + 7 * 7 * 256 * 1024 + 1024 * (91 + 364)
    # 4 convs 3x3x256x256 at 14x14; 2x2 transposed conv 256 -> 256 (each input pixel feeds 4
    # outputs); 1x1 logits 256 -> 91 at 28x28.
    mask = 4 * 196 * 9 * 256 * 256 + 196 * 4 * 256 * 256 + 784 * 256 * 91
    assert result['box_head_gmacs'] == pytest.approx(1000 * box / 1e9, rel=1e-9)
    assert result['mask_head_gmacs'] == pytest.approx(100 * mask / 1e9, rel=1e-9)

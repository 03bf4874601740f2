"""The RetinaNet head: initializers, output layout, norm options, separable convs, a train step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax import losses
from spinenet_jax.analysis.summary import count_leaves
from spinenet_jax.modeling import layers
from spinenet_jax.modeling.retinanet import HeadConfig, RetinaNet, RetinaNetConfig
from spinenet_jax.modeling.spinenet import SpineNetConfig
from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import postprocess
from spinenet_jax.ops import target_assigner

TINY = dict(filter_size_scale=0.125, endpoints_num_filters=16)


def tiny_config(norm=layers.NormConfig(), head=HeadConfig(num_convs=2, num_filters=16, num_classes=5)):
  return RetinaNetConfig(SpineNetConfig(norm=norm, **TINY), head)


def abstract(config, size=128):
  return jax.eval_shape(lambda: RetinaNet(config).init(jax.random.key(0),
                                                       jnp.zeros((1, size, size, 3))))


def test_head_initializers_and_output_layout():
  config = tiny_config()
  x = jax.random.normal(jax.random.key(0), (1, 128, 128, 3))
  variables = jax.jit(RetinaNet(config).init)(jax.random.key(1), x)
  head = variables['params']['head']
  assert float(head['class_predict']['conv']['bias'][0]) == pytest.approx(-math.log(99))
  np.testing.assert_array_equal(head['box_predict']['conv']['bias'], 0.0)
  np.testing.assert_array_equal(head['class_conv_0']['conv']['bias'], 0.0)
  assert float(jnp.std(head['class_conv_1']['conv']['kernel'])) == pytest.approx(0.01, rel=0.1)
  assert float(jnp.std(head['class_predict']['conv']['kernel'])) == pytest.approx(1e-5, rel=0.1)
  out = jax.jit(RetinaNet(config).apply)(variables, x)
  assert {k: v.shape for k, v in out['cls_outputs'].items()} == {
      3: (1, 16, 16, 45), 4: (1, 8, 8, 45), 5: (1, 4, 4, 45), 6: (1, 2, 2, 45), 7: (1, 1, 1, 45)}
  assert out['box_outputs'][5].shape == (1, 4, 4, 36)
  # Every class starts near the prior probability 0.01.
  np.testing.assert_allclose(jax.nn.sigmoid(out['cls_outputs'][3]), 0.01, rtol=0.01)
  # Convs are shared across levels; norms are per level.
  assert {k for k in head if k.startswith('class_norm_0')} == {f'class_norm_0_level_{l}'
                                                              for l in range(3, 8)}


def test_group_norm_and_evonorm_have_no_statistics():
  bn = abstract(tiny_config())
  gn = abstract(tiny_config(layers.NormConfig(type='group', epsilon=1e-5)))
  evo = abstract(tiny_config(layers.NormConfig(type='evonorm_s0', epsilon=1e-5)))
  assert count_leaves(gn['params']) == count_leaves(bn['params'])     # gamma, beta per norm
  assert 'batch_stats' not in gn and 'batch_stats' not in evo
  # EvoNorm-S0 adds one `v` vector per norm that is followed by an activation.
  assert count_leaves(evo['params']) > count_leaves(bn['params'])
  with pytest.raises(ValueError, match='norm type must be one of'):
    layers.NormConfig(type='layer')


def test_evonorm_s0_values():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 4)), jnp.float32)
  norm = layers.Norm(layers.NormConfig(type='evonorm_s0', epsilon=1e-5, groups=2))
  variables = norm.init(jax.random.key(0), x, True, 'swish')
  y = norm.apply(variables, x, True, 'swish')
  xn = np.asarray(x).reshape(2, 3, 3, 2, 2)
  std = np.sqrt(xn.var(axis=(1, 2, 4), keepdims=True) + 1e-5)
  expected = (xn / (1 + np.exp(-xn)) / std).reshape(x.shape)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
  linear = norm.apply(norm.init(jax.random.key(0), x, True, None), x, True, None)
  np.testing.assert_allclose(linear, (xn / std).reshape(x.shape), rtol=1e-5, atol=1e-6)


def test_group_count_falls_back_to_a_divisor():
  assert layers.num_groups(256, 32) == 32
  assert layers.num_groups(164, 32) == 4
  assert layers.num_groups(83, 32) == 1


def test_separable_head_parameters():
  head = HeadConfig(num_convs=2, num_filters=16, num_classes=5, separable_conv=True)
  params = abstract(tiny_config(head=head))['params']['head']
  assert params['class_conv_0']['depthwise']['kernel'].shape == (3, 3, 1, 16)
  assert params['class_conv_0']['pointwise']['kernel'].shape == (1, 1, 16, 16)
  plain = abstract(tiny_config())['params']['head']
  # Per conv: 9*C + C*F + F instead of 9*C*F + F.
  assert count_leaves(plain) - count_leaves(params) == (
      2 * 2 * (9 * 16 * 16 - 9 * 16 - 16 * 16) + (9 * 16 * 45 - 9 * 16 - 16 * 45) +
      (9 * 16 * 36 - 9 * 16 - 16 * 36))


def test_anchor_levels_must_match_backbone():
  with pytest.raises(ValueError, match='anchor levels 3..6 differ'):
    RetinaNetConfig(anchors=anchor_ops.AnchorConfig(max_level=6))


def test_config_round_trip():
  config = tiny_config(head=HeadConfig(num_convs=3, num_filters=8, separable_conv=True,
                                       norm=layers.NormConfig(type='group', epsilon=1e-5)))
  assert RetinaNetConfig.from_dict(config.to_dict()) == config


def test_head_norm_can_differ_from_backbone():
  head = HeadConfig(num_convs=2, num_filters=16, num_classes=5,
                    norm=layers.NormConfig(type='group', epsilon=1e-5))
  variables = abstract(tiny_config(head=head))
  assert 'head' not in variables['batch_stats'] and 'backbone' in variables['batch_stats']
  assert 'gn' in variables['params']['head']['class_norm_0_level_3']


def test_head_norm_type_from_config_file():
  import sys
  from conftest import ROOT
  sys.path.insert(0, ROOT)
  from configs import spinenet49
  from spinenet_jax.modeling import factory
  config = spinenet49.get_config()
  assert factory.retinanet_config(config.model).head.norm is None
  config.model.head.norm_type = 'evonorm_s0'
  norm = factory.retinanet_config(config.model).head.norm
  assert norm.type == 'evonorm_s0' and norm.epsilon == config.model.norm.epsilon


@pytest.mark.parametrize('box_loss', ['huber', 'giou'])
def test_jitted_train_step_with_on_device_labels_learns(box_loss):
  config = tiny_config()
  model = RetinaNet(config)
  size = (128, 128)
  anchor_config = config.anchors
  anchors = jnp.asarray(anchor_ops.generate_anchors(anchor_config, size))
  level_anchors = {k: jnp.asarray(v) for k, v in
                   anchor_ops.unpack_levels(np.asarray(anchors), anchor_config, size).items()}
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
  gt_boxes = jnp.array([[[10, 10, 60, 70], [70, 20, 120, 60], [-1, -1, -1, -1]],
                        [[30, 40, 100, 110], [-1, -1, -1, -1], [-1, -1, -1, -1]]], jnp.float32)
  gt_classes = jnp.array([[1, 4, -1], [2, -1, -1]])
  loss_config = losses.LossConfig(num_classes=5, box_loss=box_loss)
  variables = jax.jit(model.init)(jax.random.key(0), images)

  def loss_fn(params, batch_stats):
    out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                               mutable=['batch_stats'])
    labels = target_assigner.label_batch(anchors, gt_boxes, gt_classes)
    cls_t = anchor_ops.unpack_levels(labels.cls_targets[..., None], anchor_config, size)
    box_t = anchor_ops.unpack_levels(labels.box_targets, anchor_config, size)
    terms = losses.retinanet_loss(out['cls_outputs'], out['box_outputs'], cls_t, box_t,
                                  labels.num_positives, loss_config, level_anchors)
    total = terms['model_loss'] + losses.l2_regularization(params, 4e-5)
    return total, (terms['model_loss'], updates['batch_stats'])

  @jax.jit
  def step(params, batch_stats):
    (_, (loss, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    return jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads), stats, loss

  params, stats = variables['params'], variables['batch_stats']
  history = []
  for _ in range(6):
    params, stats, loss = step(params, stats)
    history.append(float(loss))
  # The model loss (L2 is tested on its own; batch norm over 2 images makes it jumpy) goes down.
  assert all(np.isfinite(history)) and history[-1] < history[0], history

  out = jax.jit(model.apply)({'params': params, 'batch_stats': stats}, images)
  dets = jax.jit(lambda o: postprocess.generate_detections(
      o['cls_outputs'], o['box_outputs'], level_anchors, jnp.array([[128.0, 128.0]] * 2), 5))(out)
  assert dets['detection_boxes'].shape == (2, 100, 4)
  assert dets['detection_classes'].dtype == jnp.int32

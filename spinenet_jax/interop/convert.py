"""Official TensorFlow checkpoints -> model checkpoints of this project.

Formats:
  tf1: checkpoints of the official TPU detection code (tensorflow/tpu models/official/detection).
  tf2: TF Model Garden `official.vision` checkpoints (tf.train.Checkpoint of a RetinaNet model).

The settings a checkpoint cannot tell (activation, padding mode, BN epsilon/momentum, anchor size)
default to the source's COCO SpineNet configs and can be overridden; what a checkpoint does tell (the
endpoint width, e.g. the 256-channel endpoints of the released 49S checkpoints, and the class count
of a head fine-tuned on other classes) is read from it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spinenet_jax.interop import head_names, maskrcnn_names
from spinenet_jax.interop import tf1_names
from spinenet_jax.interop import tf2_names
from spinenet_jax.interop import tf_checkpoint
from spinenet_jax.modeling import block_specs
from spinenet_jax.modeling import factory
from spinenet_jax.modeling import layers
from spinenet_jax.modeling import maskrcnn as maskrcnn_model
from spinenet_jax.modeling.retinanet import HeadConfig, RetinaNet, RetinaNetConfig
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig
from spinenet_jax.ops.anchors import AnchorConfig

FORMATS = ('tf1', 'tf2')
# Head (num_convs, num_filters) and anchor_size of the official RetinaNet yamls per model id.
OFFICIAL_HEADS = {'49S': (4, 128), '49': (4, 256), '96': (4, 256), '143': (4, 256),
                  '143L': (4, 256), '190': (7, 512)}
OFFICIAL_ANCHOR_SIZE = {'49S': 3.0, '49': 3.0, '96': 3.0, '143': 4.0, '143L': 4.0, '190': 4.0}


@dataclasses.dataclass(frozen=True)
class SourceFormat:
  """How to read one checkpoint format, and the model settings its configs use by default."""
  backbone_names: Callable[[Mapping, SpineNetConfig, Mapping], dict]  # (params, config, tensors)
  head_names: Callable[[Mapping, Mapping], dict]                      # (params, tensors)
  ignored: object                                                     # regex ignored on purpose
  is_backbone: Callable[[str], bool]
  defaults: dict


def _tf2_head_prefix(tensors: Mapping) -> str:
  return 'head' if tf2_names.detect_prefix(tensors) == 'backbone' else 'model/_head'


def source_format(fmt: str) -> SourceFormat:
  if fmt == 'tf1':
    return SourceFormat(
        backbone_names=lambda params, config, tensors: tf1_names.spinenet_tf1_names(params),
        head_names=lambda params, tensors: head_names.head_tf1_names(params),
        ignored=tf_checkpoint.TF1_IGNORED,
        is_backbone=lambda name: name.startswith('spinenet/'),
        # The committed RetinaNet yamls: swish, BN momentum 0.997 / epsilon 1e-4, explicit padding.
        defaults=dict(activation='swish', conv_padding='fixed', resample_pooling='official',
                      bn_momentum=0.997, bn_epsilon=1e-4))
  if fmt == 'tf2':
    return SourceFormat(
        backbone_names=lambda params, config, tensors: tf2_names.spinenet_tf2_names(
            params, config, tf2_names.detect_prefix(tensors)),
        head_names=lambda params, tensors: head_names.head_tf2_names(params,
                                                                     _tf2_head_prefix(tensors)),
        ignored=tf_checkpoint.TF2_IGNORED,
        is_backbone=tf2_names.is_backbone_name,
        # Model Garden's COCO SpineNet RetinaNet configs: SAME padding, swish, BN 0.99 / 1e-3.
        defaults=dict(activation='swish', conv_padding='same', resample_pooling='model_garden',
                      bn_momentum=0.99, bn_epsilon=1e-3))
  raise ValueError(f'--format must be one of {FORMATS}, got {fmt!r}.')


def model_config(fmt: str, model_id: str, activation: str | None = None,
                 conv_padding: str | None = None, bn_momentum: float | None = None,
                 bn_epsilon: float | None = None, endpoints_num_filters: int | None = None,
                 head_num_convs: int | None = None, head_num_filters: int | None = None,
                 anchor_size: float | None = None, min_level: int = 3,
                 max_level: int = 7) -> RetinaNetConfig:
  """The RetinaNet config for a checkpoint of `fmt`: the format's defaults, overridden where given."""
  d = source_format(fmt).defaults
  model_id = block_specs.normalize_model_id(model_id)
  norm = layers.NormConfig(momentum=d['bn_momentum'] if bn_momentum is None else bn_momentum,
                           epsilon=d['bn_epsilon'] if bn_epsilon is None else bn_epsilon)
  backbone = SpineNetConfig.from_model_id(
      model_id, activation=activation or d['activation'],
      conv_padding=conv_padding or d['conv_padding'], resample_pooling=d['resample_pooling'],
      norm=norm, endpoints_num_filters=endpoints_num_filters, min_level=min_level,
      max_level=max_level)
  num_convs, num_filters = OFFICIAL_HEADS[model_id]
  head = HeadConfig(num_convs=num_convs if head_num_convs is None else head_num_convs,
                    num_filters=num_filters if head_num_filters is None else head_num_filters)
  anchors = AnchorConfig(min_level=min_level, max_level=max_level,
                         anchor_size=OFFICIAL_ANCHOR_SIZE[model_id] if anchor_size is None
                         else anchor_size)
  return RetinaNetConfig(backbone, head, anchors)


def abstract_variables(config, size: int = 256) -> dict:
  model = factory.model_from_config(config)
  if isinstance(config, maskrcnn_model.MaskRCNNConfig):
    inputs = maskrcnn_model.init_inputs((size, size))
  else:
    inputs = (jnp.zeros((1, size, size, 3)),)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))


def _backbone_of(config):
  return config if isinstance(config, SpineNetConfig) else config.backbone


def _name_map(source: SourceFormat, config, template: Mapping, tensors: Mapping) -> dict:
  if isinstance(config, SpineNetConfig):
    return source.backbone_names(template['params'], config, tensors)
  names = {n: (c, ('backbone',) + p) for n, (c, p) in source.backbone_names(
      template['params']['backbone'], config.backbone, tensors).items()}
  if isinstance(config, maskrcnn_model.MaskRCNNConfig):
    if source.ignored is not tf_checkpoint.TF1_IGNORED:
      raise ValueError('Mask R-CNN checkpoints convert from the tf1 format only.')
    names.update(maskrcnn_names.maskrcnn_tf1_names(template['params']))
  else:
    names.update(source.head_names(template['params'], tensors))
  return names


def _endpoint_width_in_checkpoint(source: SourceFormat, backbone: SpineNetConfig,
                                  tensors: Mapping[str, np.ndarray]) -> int | None:
  names = source.backbone_names(abstract_variables(backbone)['params'], backbone, tensors)
  target = ('params', (f'endpoint_{backbone.min_level}', 'conv', 'kernel'))
  for name, where in names.items():
    if where == target and name in tensors:
      return int(tensors[name].shape[-1])
  return None


# Where the class prediction conv's kernel sits (plain or separable head); its last dimension is
# anchors_per_location * num_classes.
_CLASS_KERNELS = (('head', 'class_predict', 'conv', 'kernel'),
                  ('head', 'class_predict', 'pointwise', 'kernel'))


def num_classes_in_checkpoint(name_map: Mapping, tensors: Mapping[str, np.ndarray],
                              anchors_per_location: int) -> tuple[int, str] | None:
  """(num_classes, checkpoint name) read from the class head's final conv kernel, or None when
  the checkpoint has no class head. Raises ValueError, naming the variable and its shape, when its
  output channels are not a whole number (>= 2, background included) of classes per anchor."""
  for name, (_, path) in name_map.items():
    if path in _CLASS_KERNELS and name in tensors:
      shape = tuple(np.shape(tensors[name]))
      channels = shape[-1]
      if channels % anchors_per_location or channels // anchors_per_location < 2:
        raise ValueError(
            f'class head {name} has shape {shape}: its {channels} output channels are not '
            f'anchors x classes for {anchors_per_location} anchors per location and at least 2 '
            'classes (background included); check the anchor settings.')
      return channels // anchors_per_location, name
  return None


def _fit_num_classes(config: RetinaNetConfig, name_map: Mapping, tensors: Mapping,
                     num_classes: int | None, report: dict) -> RetinaNetConfig:
  """`config` with the checkpoint's class count (checked against `num_classes` if given)."""
  found = num_classes_in_checkpoint(name_map, tensors, config.anchors.anchors_per_location)
  if found is None:   # no class head: the strict mapping below names what is missing
    wanted = config.head.num_classes if num_classes is None else num_classes
    report['num_classes'] = wanted
    return dataclasses.replace(config, head=dataclasses.replace(config.head, num_classes=wanted))
  classes, name = found
  if num_classes is not None and num_classes != classes:
    raise ValueError(f'num_classes={num_classes} (--num_classes) disagrees with the checkpoint: '
                     f'class head {name} has shape {tuple(np.shape(tensors[name]))}, i.e. '
                     f'{classes} classes (background included) at '
                     f'{config.anchors.anchors_per_location} anchors per location.')
  report['num_classes'] = classes
  if classes == config.head.num_classes:
    logging.info('checkpoint class head %s: %d classes (background included).', name, classes)
    return config
  logging.warning('checkpoint class head %s has %d classes (config: %d); using %d.', name,
                  classes, config.head.num_classes, classes)
  return dataclasses.replace(config, head=dataclasses.replace(config.head, num_classes=classes))


def convert(fmt: str, tensors: Mapping[str, np.ndarray], config: RetinaNetConfig,
            backbone_only: bool = False, detect_endpoints: bool = True,
            keep_dtype: bool = False, num_classes: int | None = None,
            ) -> tuple[SpineNetConfig | RetinaNetConfig, dict, dict]:
  """Maps checkpoint `tensors` onto the model of `config`; returns (config, variables, report).

  With `backbone_only` the result is a SpineNet (config.backbone) and the checkpoint's other
  variables are counted and left out. With `detect_endpoints`, the endpoint width is taken from the
  checkpoint when it differs from the config's. A RetinaNet gets the class count of the checkpoint's
  class head (channels / anchors per location; `report['num_classes']`), so heads fine-tuned on
  other classes convert; `num_classes`, if given, must agree with it (ValueError otherwise). Values
  become float32 unless `keep_dtype`.
  """
  if backbone_only and num_classes is not None:
    raise ValueError('num_classes has no effect on a backbone-only conversion; leave it out.')
  source = source_format(fmt)
  report = {'format': fmt}
  if detect_endpoints:
    width = _endpoint_width_in_checkpoint(source, config.backbone, tensors)
    if width is not None and width != config.backbone.endpoints_num_filters:
      logging.warning('checkpoint endpoints have %d channels (config: %d); using %d.', width,
                      config.backbone.endpoints_num_filters, width)
      report['endpoints_num_filters_from_checkpoint'] = width
      config = dataclasses.replace(
          config, backbone=dataclasses.replace(config.backbone, endpoints_num_filters=width))
  target = config.backbone if backbone_only else config
  template = abstract_variables(target)
  name_map = _name_map(source, target, template, tensors)
  if not backbone_only and isinstance(config, maskrcnn_model.MaskRCNNConfig):
    if num_classes is not None and num_classes != config.num_classes:
      raise ValueError(f'num_classes={num_classes} (--num_classes) disagrees with the checkpoint: '
                       f'fast_rcnn_head/class-predict has {config.num_classes} classes.')
    report['num_classes'] = config.num_classes
  if not backbone_only and isinstance(config, RetinaNetConfig):
    # The name map does not depend on the class count; only the template's shapes do.
    target = _fit_num_classes(config, name_map, tensors, num_classes, report)
    if target != config:
      template = abstract_variables(target)
  skipped = (lambda n: not source.is_backbone(n)) if backbone_only else (lambda n: False)
  variables, skipped_names = tf_checkpoint.apply_name_map(
      tensors, name_map, template, source.ignored, skipped,
      transforms=head_names.depthwise_transforms(name_map), keep_dtype=keep_dtype)
  report.update(mapped=len(name_map), skipped_non_backbone=len(skipped_names),
                ignored=sum(1 for n in tensors if source.ignored.search(n)))
  return target, variables, report


def dump_features(config: SpineNetConfig | RetinaNetConfig, variables: dict,
                  images: np.ndarray) -> dict[str, np.ndarray]:
  """Inference-mode endpoints (level3 ... level7) and, for a RetinaNet, the raw head outputs
  (class_level3 ..., box_level3 ...; channels anchor * num_classes + class, anchor * 4 + coord)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.float32:
    raise ValueError(f'--dump_features input must be float32 NHWC with 3 channels, got '
                     f'{images.dtype} {images.shape}.')
  backbone = _backbone_of(config)
  backbone_vars = variables
  if isinstance(config, RetinaNetConfig):
    backbone_vars = {c: v['backbone'] for c, v in variables.items()}
  out = {f'level{k}': np.asarray(v)
         for k, v in jax.jit(SpineNet(backbone).apply)(backbone_vars, images).items()}
  if isinstance(config, RetinaNetConfig):
    head = jax.jit(RetinaNet(config).apply)(variables, images)
    out.update({f'class_level{k}': np.asarray(v) for k, v in head['cls_outputs'].items()})
    out.update({f'box_level{k}': np.asarray(v) for k, v in head['box_outputs'].items()})
  return out

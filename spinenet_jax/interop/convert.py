"""Official TensorFlow checkpoints -> model checkpoints of this project.

Formats:
  tf1: checkpoints of the official TPU detection code (tensorflow/tpu models/official/detection).
  tf2: TF Model Garden `official.vision` checkpoints (tf.train.Checkpoint of a RetinaNet model).

The settings a checkpoint cannot tell (activation, padding mode, BN epsilon/momentum) default to the
source's COCO SpineNet configs and can be overridden; what a checkpoint does tell (the endpoint width,
e.g. the 256-channel endpoints of the released 49S checkpoints) is read from it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spinenet_jax.interop import tf1_names
from spinenet_jax.interop import tf_checkpoint
from spinenet_jax.modeling import layers
from spinenet_jax.modeling.spinenet import SpineNet, SpineNetConfig

FORMATS = ('tf1', 'tf2')


@dataclasses.dataclass(frozen=True)
class SourceFormat:
  """How to read one checkpoint format, and the model settings its configs use by default."""
  names: Callable[[Mapping, SpineNetConfig, Mapping], dict]  # (params, config, tensors) -> names
  ignored: object                                    # regex of names ignored on purpose
  is_backbone: Callable[[str], bool]                 # name belongs to the backbone
  defaults: dict


def _tf1_format() -> SourceFormat:
  return SourceFormat(
      names=lambda params, config, tensors: tf1_names.spinenet_tf1_names(params),
      ignored=tf_checkpoint.TF1_IGNORED,
      is_backbone=lambda name: name.startswith('spinenet/'),
      # The committed RetinaNet yamls: swish, BN momentum 0.997 / epsilon 1e-4, explicit padding.
      defaults=dict(activation='swish', conv_padding='fixed', resample_pooling='official',
                    bn_momentum=0.997, bn_epsilon=1e-4))


def _tf2_format() -> SourceFormat:
  from spinenet_jax.interop import tf2_names  # noqa: PLC0415 (keeps tf1-only use light)
  return SourceFormat(
      names=lambda params, config, tensors: tf2_names.spinenet_tf2_names(
          params, config, tf2_names.detect_prefix(tensors)),
      ignored=tf_checkpoint.TF2_IGNORED,
      is_backbone=tf2_names.is_backbone_name,
      # Model Garden's COCO SpineNet RetinaNet configs: SAME padding, swish, BN 0.99 / 1e-3.
      defaults=dict(activation='swish', conv_padding='same', resample_pooling='model_garden',
                    bn_momentum=0.99, bn_epsilon=1e-3))


def source_format(fmt: str) -> SourceFormat:
  if fmt == 'tf1':
    return _tf1_format()
  if fmt == 'tf2':
    return _tf2_format()
  raise ValueError(f'--format must be one of {FORMATS}, got {fmt!r}.')


def model_config(fmt: str, model_id: str, activation: str | None = None,
                 conv_padding: str | None = None, bn_momentum: float | None = None,
                 bn_epsilon: float | None = None, endpoints_num_filters: int | None = None,
                 min_level: int = 3, max_level: int = 7) -> SpineNetConfig:
  """The SpineNet config for a checkpoint of `fmt`: the format's defaults, overridden where given."""
  d = source_format(fmt).defaults
  norm = layers.NormConfig(momentum=d['bn_momentum'] if bn_momentum is None else bn_momentum,
                           epsilon=d['bn_epsilon'] if bn_epsilon is None else bn_epsilon)
  return SpineNetConfig.from_model_id(
      model_id, activation=activation or d['activation'],
      conv_padding=conv_padding or d['conv_padding'], resample_pooling=d['resample_pooling'],
      norm=norm,
      endpoints_num_filters=endpoints_num_filters, min_level=min_level, max_level=max_level)


def abstract_variables(config: SpineNetConfig, size: int = 256) -> dict:
  model = SpineNet(config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _endpoint_width_in_checkpoint(fmt: SourceFormat, config: SpineNetConfig,
                                  tensors: Mapping[str, np.ndarray]) -> int | None:
  names = fmt.names(abstract_variables(config)['params'], config, tensors)
  target = ('params', (f'endpoint_{config.min_level}', 'conv', 'kernel'))
  for name, where in names.items():
    if where == target and name in tensors:
      return int(tensors[name].shape[-1])
  return None


def convert(fmt: str, tensors: Mapping[str, np.ndarray], config: SpineNetConfig,
            backbone_only: bool = False, detect_endpoints: bool = True,
            keep_dtype: bool = False) -> tuple[SpineNetConfig, dict, dict]:
  """Maps checkpoint `tensors` onto a SpineNet; returns (config, variables, report).

  With `detect_endpoints`, the endpoint width is taken from the checkpoint when it differs from the
  config's (the released 49S checkpoints use 256 where the scaling map says 128).
  """
  source = source_format(fmt)
  report = {'format': fmt}
  if detect_endpoints:
    width = _endpoint_width_in_checkpoint(source, config, tensors)
    if width is not None and width != config.endpoints_num_filters:
      logging.warning('checkpoint endpoints have %d channels (config: %d); using %d.', width,
                      config.endpoints_num_filters, width)
      report['endpoints_num_filters_from_checkpoint'] = width
      config = dataclasses.replace(config, endpoints_num_filters=width)
  template = abstract_variables(config)
  name_map = source.names(template['params'], config, tensors)
  skipped = (lambda n: not source.is_backbone(n)) if backbone_only else (lambda n: False)
  variables, skipped_names = tf_checkpoint.apply_name_map(tensors, name_map, template,
                                                          source.ignored, skipped,
                                                          keep_dtype=keep_dtype)
  report.update(mapped=len(name_map), skipped_non_backbone=len(skipped_names),
                ignored=sum(1 for n in tensors if source.ignored.search(n)))
  return config, variables, report


def dump_features(config: SpineNetConfig, variables: dict, images: np.ndarray) -> dict[str, np.ndarray]:
  """Endpoints in inference mode on float32 NHWC `images`, keyed level3 ... level7."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.float32:
    raise ValueError(f'--dump_features input must be float32 NHWC with 3 channels, got '
                     f'{images.dtype} {images.shape}.')
  out = jax.jit(SpineNet(config).apply)(variables, images)
  return {f'level{level}': np.asarray(v) for level, v in out.items()}

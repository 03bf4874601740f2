"""The detector interface and the registry keyed by `config.model.type`.

The official code's `BaseModel` splits a detector into `build_outputs` / `build_losses` /
`build_predictions`; detectron2's meta-architectures return a dict of named losses. Here a
`Detector` owns everything specific to one meta-architecture, so the training step, the loop,
evaluation and the tools know none:

  init(rng, image_size)                 -> variables {'params', 'batch_stats'}
  loss(variables, batch, rngs)          -> (named loss terms, metrics, new batch_stats)
  detect(variables, batch)              -> detections (boxes, scores, classes [, masks])
  parser_options                        -> what the input parser must add (e.g. masks)
  eval_types                            -> evaluators that apply ('bbox'; Mask R-CNN also 'segm')
  checkpoint_names(fmt, params)         -> official checkpoint names of the non-backbone part
  summary(image_size)                   -> parameters and multiply-adds

Detector modules register under a type name. The registry loads the built-in ones by module name
when first asked, so code that only builds detectors from configs (training, evaluation) imports
no detector module.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax

Array = jax.Array
Variables = dict[str, Any]

# Built-in detectors: type -> module that registers it (imported on first use).
BUILTIN = {'retinanet': 'spinenet_jax.detectors.retinanet',
           'maskrcnn': 'spinenet_jax.detectors.maskrcnn'}
_REGISTRY: dict[str, type[Detector]] = {}


class Detector(abc.ABC):
  """One detector (model settings, compute dtype, loss and detection settings).

  Instances are immutable and hashable (jitted steps are cached per detector).
  """

  type: ClassVar[str]
  eval_types: ClassVar[tuple[str, ...]] = ('bbox',)

  @classmethod
  @abc.abstractmethod
  def from_config(cls, config) -> Detector:
    """The detector of an `ml_collections` run config (`config.model`, `config.loss`, ...)."""

  @classmethod
  @abc.abstractmethod
  def from_model_config(cls, model_config: Any, config) -> Detector:
    """The detector of a saved model config (`model_io.load_model`), with the run config's
    compute dtype, loss and detection settings."""

  @classmethod
  @abc.abstractmethod
  def model_config_from_dict(cls, d: dict) -> Any:
    """The model config stored in a model.json "model" entry of this type."""

  @property
  @abc.abstractmethod
  def model_config(self) -> Any:
    """The serializable model settings (what `model_io.save_model` stores)."""

  # The config key that sets `num_classes`, for messages about datasets that do not fit.
  num_classes_key: ClassVar[str] = 'config.model.num_classes'

  @property
  @abc.abstractmethod
  def num_classes(self) -> int:
    """Classifier columns: category ids 1..num_classes - 1, column 0 the background."""

  @abc.abstractmethod
  def init(self, rng: Array, image_size: tuple[int, int]) -> Variables:
    """Fresh variables {'params', 'batch_stats'} for inputs of `image_size` (H, W)."""

  @abc.abstractmethod
  def loss(self, variables: Variables, batch: Mapping[str, Array], rngs: Mapping[str, Array]
           ) -> tuple[dict[str, Array], dict[str, Array], Any]:
    """The training loss on a whole batch, without L2 (the step adds it).

    `batch`: 'images' [B, H, W, 3] and padded ground truth ('gt_boxes' [B, G, 4] in input
    pixels, 'gt_classes' [B, G], -1 padding, and whatever `parser_options` asked for).
    `rngs`: 'dropout' (stochastic depth, DropBlock) and 'sampling' (a detector's own sampling,
    e.g. RoIs), each a key that differs per step.
    Returns (loss terms: {name: scalar}, summed by the step; metrics: {name: scalar} to log;
    the new batch statistics).
    """

  @abc.abstractmethod
  def detect(self, variables: Variables, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Detections of 'images' [B, H, W, 3] with 'image_info' [B, 4, 2]: 'detection_boxes'
    [B, M, 4] (ymin, xmin, ymax, xmax in input-canvas pixels), 'detection_scores' [B, M] (-1 for
    padded slots), 'detection_classes' [B, M] int32, 'num_detections' [B] (and 'detection_masks'
    where the detector has them)."""

  @property
  def parser_options(self) -> dict[str, Any]:
    """Extra `data.parser.ParserConfig` fields the detector's training needs (e.g. masks)."""
    return {}

  @abc.abstractmethod
  def checkpoint_names(self, fmt: str, params: Mapping, **options) -> dict[str, tuple[str, tuple]]:
    """{official variable name: (kind, our path)} of everything but the backbone, for
    checkpoints of format `fmt` ('tf1' or 'tf2'); `params` is the (abstract) parameter tree."""

  @abc.abstractmethod
  def summary(self, image_size: tuple[int, int]) -> dict[str, Any]:
    """Parameters (backbone and total), batch-norm statistics and GMACs per image."""


def register(name: str) -> Callable[[type[Detector]], type[Detector]]:
  """Class decorator: `config.model.type == name` builds this detector."""
  def add(cls: type[Detector]) -> type[Detector]:
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f'detector type {name!r} is registered twice.')
    cls.type = name
    _REGISTRY[name] = cls
    return cls
  return add


def types() -> tuple[str, ...]:
  return tuple(sorted(set(BUILTIN) | set(_REGISTRY)))


def detector_class(name: str) -> type[Detector]:
  """The detector registered as `name` (built-ins are imported on first use)."""
  if name not in _REGISTRY and name in BUILTIN:
    importlib.import_module(BUILTIN[name])
  if name not in _REGISTRY:
    raise ValueError(f'config.model.type must be one of {list(types())}, got {name!r}.')
  return _REGISTRY[name]


def model_type(config) -> str:
  """`config.model.type`; configs written before it existed are RetinaNet configs."""
  return config.model.get('type', None) or 'retinanet'


def build(config) -> Detector:
  """The detector of a run config (`config.model.type` picks the class)."""
  return detector_class(model_type(config)).from_config(config)


def from_model_config(model_config: Any, type_name: str, config) -> Detector:
  """The detector of a saved model config of `type_name` (from `model_io.load_model`)."""
  return detector_class(type_name).from_model_config(model_config, config)

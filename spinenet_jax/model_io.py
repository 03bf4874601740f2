"""Model checkpoints: the variables of a model plus the settings needed to rebuild it.

A model checkpoint is a folder with `model.json` (the model's settings and where the weights came from)
and `variables/` (an orbax checkpoint of {'params', 'batch_stats'}). Converted official checkpoints are
written in this format, so whatever loads one needs no flags to reproduce the source model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from spinenet_jax.detectors import base as detectors
from spinenet_jax.modeling.spinenet import SpineNetConfig

ModelConfig = Any   # SpineNetConfig, or a detector's model config (RetinaNetConfig, ...)

MODEL_JSON = 'model.json'
VARIABLES_DIR = 'variables'
FORMAT_VERSION = 1


def config_to_dict(config: ModelConfig) -> dict:
  """The "model" entry of model.json: {'type': ..., ...}."""
  if isinstance(config, SpineNetConfig):
    return {'type': 'spinenet', 'backbone': config.to_dict()}
  return config.to_dict()


def config_from_dict(d: dict) -> ModelConfig:
  """Inverse of `config_to_dict`: a SpineNetConfig or the model config of a detector type."""
  kind = d.get('type')
  if kind == 'spinenet':
    return SpineNetConfig.from_dict(d['backbone'])
  if kind not in detectors.types():
    raise ValueError(f'unknown model type {kind!r}; expected "spinenet" or one of '
                     f'{list(detectors.types())}.')
  return detectors.detector_class(kind).model_config_from_dict(d)


def model_type(config: ModelConfig) -> str:
  """'spinenet' or the detector type of a model config (as stored in model.json)."""
  return config_to_dict(config)['type']


def _checkpointer() -> ocp.StandardCheckpointer:
  # Model checkpoints are host-local numpy trees: this process alone reads or writes them, so no
  # barrier waits for other processes of a multi-host job.
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def save_model(directory: str, config: ModelConfig, variables: dict, info: dict | None = None) -> None:
  """Writes `variables` and the model `config` to `directory` (created; must not exist)."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, VARIABLES_DIR)):
    raise FileExistsError(f'{directory} already holds a model checkpoint; choose a new --output.')
  os.makedirs(directory, exist_ok=True)
  tree = jax.tree_util.tree_map(np.asarray, dict(variables))
  checkpointer = _checkpointer()
  checkpointer.save(os.path.join(directory, VARIABLES_DIR), tree)
  checkpointer.wait_until_finished()
  meta = {'format_version': FORMAT_VERSION, 'model': config_to_dict(config), 'info': info or {}}
  with open(os.path.join(directory, MODEL_JSON), 'w') as f:
    json.dump(meta, f, indent=2)


def load_model(directory: str) -> tuple[ModelConfig, dict[str, Any], dict]:
  """Returns (model config, variables, info) of a model checkpoint written by `save_model`."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, MODEL_JSON)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: {directory} is not a model checkpoint.')
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{meta_path}: unsupported format_version {meta.get("format_version")!r}.')
  variables = _checkpointer().restore(os.path.join(directory, VARIABLES_DIR))
  return config_from_dict(meta['model']), dict(variables), meta.get('info', {})

"""Strict import of TensorFlow checkpoints into this project's variables.

A name map says, for every variable the model needs, which checkpoint tensor fills it. Conversion is
strict: a needed tensor that is missing, a tensor of the wrong shape, or a checkpoint tensor that
nothing maps (other than optimizer slots and bookkeeping, ignored on purpose) is an error that names
the variables, never a silent skip.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import numpy as np

Path = tuple[str, ...]
NameMap = Mapping[str, tuple[str, Path]]   # checkpoint name -> (collection, flax path)

# Bookkeeping and optimizer state that a model import ignores on purpose.
TF1_IGNORED = re.compile(r'^(global_step)$|/(Momentum|ExponentialMovingAverage)$')
TF2_IGNORED = re.compile(
    r'(^|/)(save_counter|global_step|optimizer)(/|$)|\.OPTIMIZER_SLOT/|^_CHECKPOINTABLE_OBJECT_GRAPH$')


class CheckpointMappingError(ValueError):
  """The checkpoint does not fit the model: lists the missing, misshaped and unmapped variables."""


def read_tf_checkpoint(path: str) -> dict[str, np.ndarray]:
  """All tensors of a TF1 or TF2 checkpoint (a prefix like .../model.ckpt-1234 or a directory)."""
  import tensorflow as tf  # imported lazily: only conversion needs TensorFlow
  try:
    reader = tf.train.load_checkpoint(path)
  except (ValueError, tf.errors.OpError) as e:
    raise FileNotFoundError(f'cannot read a TensorFlow checkpoint at {path!r}: {e}') from e
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}


# A TF batch-norm variable -> (flax collection, leaf name inside a flax BatchNorm).
BN_VARIABLES = (('gamma', 'params', 'scale'), ('beta', 'params', 'bias'),
                ('moving_mean', 'batch_stats', 'mean'), ('moving_variance', 'batch_stats', 'var'))


def bn_names(tf_base: str, bn_path: Path, suffix: str = '') -> dict[str, tuple[str, Path]]:
  """The four variables of the TF batch norm `tf_base`, for the flax BatchNorm at `bn_path`."""
  return {f'{tf_base}/{tf_name}{suffix}': (collection, bn_path + (leaf,))
          for tf_name, collection, leaf in BN_VARIABLES}


def get_path(tree: Mapping, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def apply_name_map(tensors: Mapping[str, np.ndarray], name_map: NameMap, template: Mapping,
                   ignored: re.Pattern, skipped: Callable[[str], bool] = lambda name: False,
                   transforms: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                   keep_dtype: bool = False) -> tuple[dict, list[str]]:
  """Fills the tree of `template` (arrays or shape structs) from `tensors` through `name_map`.

  Returns (variables, names skipped on purpose). `skipped(name)` marks checkpoint tensors that belong
  to parts of a model this import leaves out (e.g. a head when only the backbone is wanted).
  Values take the template's dtype unless `keep_dtype` (e.g. float64 reference checkpoints).
  """
  transforms = transforms or {}
  missing, misshaped, variables = [], [], {}
  for name, (collection, path) in name_map.items():
    expected = get_path(template[collection], path)
    if name not in tensors:
      missing.append(f'{name} (for {collection}/{"/".join(path)}, shape {tuple(expected.shape)})')
      continue
    value = np.asarray(transforms.get(name, lambda x: x)(tensors[name]))
    if tuple(value.shape) != tuple(expected.shape):
      misshaped.append(f'{name}: checkpoint {tuple(value.shape)}, model {tuple(expected.shape)} '
                       f'({collection}/{"/".join(path)})')
      continue
    _set(variables.setdefault(collection, {}), path,
         value if keep_dtype else value.astype(expected.dtype))
  skipped_names = sorted(n for n in tensors if n not in name_map and not ignored.search(n)
                         and skipped(n))
  unmapped = sorted(n for n in tensors if n not in name_map and not ignored.search(n)
                    and not skipped(n))
  problems = []
  for title, items in (('missing from the checkpoint', missing), ('shape mismatch', misshaped),
                       ('in the checkpoint but not mapped to the model', unmapped)):
    if items:
      problems.append(f'{len(items)} {title}:\n  ' + '\n  '.join(_head(items)))
  if problems:
    raise CheckpointMappingError('checkpoint does not fit the model.\n' + '\n'.join(problems))
  return variables, skipped_names


def _head(items: Iterable[str], n: int = 25) -> list[str]:
  items = list(items)
  return items[:n] + ([f'... and {len(items) - n} more'] if len(items) > n else [])

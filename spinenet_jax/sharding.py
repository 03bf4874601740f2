"""The device mesh, shardings and host transfers shared by training and evaluation.

Data parallelism: one `jax.jit` program over a 1-D device mesh ('data'); parameters and optimizer
state are replicated, batches are sharded along the batch axis. With several processes each
process feeds its share of every global batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spinenet_jax import distributed


def make_mesh(devices=None) -> Mesh:
  """A 1-D 'data' mesh over all devices (automatic sharding propagation, not explicit axes)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def host(tree: Any) -> Any:
  """Numpy copies of replicated arrays (this process's copy: works on any number of hosts)."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def gather(tree: Any) -> Any:
  """Numpy copies of batch-sharded arrays, whole global batches on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def compile_then_meet(jitted: Callable, first_arg: Any, batches: Iterator[dict],
                      name: str) -> Iterator[dict]:
  """`batches` unchanged, once `jitted(first_arg, batch)` is compiled and all processes have met
  at barrier `name`: gloo sets up its connections at the first collective under a fixed 30 s
  deadline, which processes that compiled or loaded data at different speeds would miss (see
  distributed.barrier). The peeked first batch goes back in front of the stream."""
  first = next(batches, None)
  if first is None:
    return iter(())
  jitted.lower(first_arg, first).compile()
  distributed.barrier(name)
  return itertools.chain([first], batches)

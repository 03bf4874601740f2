"""Multi-process start-up (`jax.distributed`) from flags or the environment.

On Cloud TPU pods and managed clusters `jax.distributed.initialize()` finds its peers by itself
(set SPINENET_DISTRIBUTED=1). Elsewhere give the coordinator explicitly: SPINENET_COORDINATOR
(host:port), SPINENET_NUM_PROCESSES and SPINENET_PROCESS_ID, e.g. for several processes on one
machine. CPU processes exchange collectives through gloo.
"""

from __future__ import annotations

import logging
import os

import jax
from jax._src import distributed as jax_distributed

log = logging.getLogger(__name__)


def initialize() -> None:
  """Starts jax.distributed when the environment asks for it (a no-op otherwise)."""
  coordinator = os.environ.get('SPINENET_COORDINATOR')
  if coordinator:
    num_processes = int(os.environ['SPINENET_NUM_PROCESSES'])
    process_id = int(os.environ['SPINENET_PROCESS_ID'])
    if os.environ.get('JAX_PLATFORMS', '') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    # A generous shutdown barrier: process 0 alone writes the final model, and on a loaded
    # machine the others can reach the end minutes apart.
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, shutdown_timeout_seconds=1800)
  elif os.environ.get('SPINENET_DISTRIBUTED') == '1':
    jax.distributed.initialize()
  else:
    return
  log.info('jax.distributed: process %d of %d, %d local / %d global devices.',
           jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches `name` (a no-op with one process).

  Uses the coordination service, not a device collective, so it may wait for minutes. Called
  after each step function is compiled and before it first runs: the first collective of a run
  sets up gloo's connections under a fixed 30 s deadline, which processes whose compile or data
  loading took different times would otherwise miss.
  """
  if jax.process_count() == 1:
    return
  jax_distributed.global_state.client.wait_at_barrier(f'spinenet_{name}', timeout_s * 1000)

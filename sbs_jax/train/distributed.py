"""Joining a multi-host JAX cluster (TPU pod slices, several GPU hosts)."""

from __future__ import annotations

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, multihost: bool = False) -> None:
  """`jax.distributed.initialize` with the given coordinator, or with automatic detection
  (TPU VMs) when `multihost`; nothing for a single-host run."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif multihost:
    jax.distributed.initialize()

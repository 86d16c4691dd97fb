"""Datasets a test registers as seqio tasks, removed again when it ends.

seqio's registries are global to the process, and pytest-xdist runs many test files in one
worker: a dataset left registered shows up in later tests' lists of registered tasks (and
their one-line refusals that name them), so those tests would pass or fail by file order."""

import contextlib

import seqio

from sbs_jax.task_kinds import task_names


def forget(*datasets: str) -> None:
  """Removes every task and mixture of `datasets` (any kind; names not registered are fine)."""
  for dataset in datasets:
    for full in task_names(dataset).values():
      seqio.MixtureRegistry.remove(full)
      seqio.TaskRegistry.remove(full)


@contextlib.contextmanager
def forgotten_after(*datasets: str):
  """`with forgotten_after("mine"): register ...`: the datasets' tasks are gone afterwards,
  whether the block passed or failed."""
  try:
    yield
  finally:
    forget(*datasets)

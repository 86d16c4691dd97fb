"""T5X's logical-axis sharding rules, a ('data', 'model') device mesh and parameter shardings.

The rule tables follow `standard_logical_axis_rules` in google-research/t5x
`t5x/partitioning.py`: with 1-D parameter partitioning only the model axis shards
parameters ('embed' is replicated); with 2-D parameter partitioning 'embed' is also
sharded over 'data'; 2-D activation partitioning shards 'embed' activations over 'model'.
Rules are ordered pairs; flax gives each logical axis the first rule whose mesh axis is
not already used by another dimension of the same array.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

LogicalAxisRules = tuple[tuple[str, str | None], ...]

_MODEL = (("batch", "data"), ("vocab", "model"))
_SHARDED_BY_MODEL = (
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),  # heads and head_dim joined, as in the 2-D attention kernels
)

# (activation_partitioning_dims, parameter_partitioning_dims) -> rules, in T5X's order.
_RULES_BY_DIMS = {
    (1, 1): _MODEL + (("embed", None),) + _SHARDED_BY_MODEL,
    (2, 1): _MODEL + _SHARDED_BY_MODEL + (("embed", "model"),),
    (1, 2): _MODEL + _SHARDED_BY_MODEL + (("embed", "data"),),
    (2, 2): _MODEL + _SHARDED_BY_MODEL + (("embed", "model"), ("embed", "data")),
}

_REPLICATED_AXES = ("relpos_buckets", "abspos_buckets", "length", "layers", "stack",
                    "mlp_activations")


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1,
    additional_rules: Sequence[tuple[str, str | None]] = ()) -> LogicalAxisRules:
  """T5X's standard logical-to-mesh axis rules for 1-D or 2-D partitioning."""
  key = (activation_partitioning_dims, parameter_partitioning_dims)
  if key not in _RULES_BY_DIMS:
    raise ValueError(f"unsupported partitioning dims: activations={key[0]}, "
                     f"parameters={key[1]} (each must be 1 or 2)")
  rules = _RULES_BY_DIMS[key] + tuple((name, None) for name in _REPLICATED_AXES)
  return rules + tuple(tuple(rule) for rule in additional_rules)


def make_mesh(data: int, model: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A data x model mesh with axis names ('data', 'model') over the first data*model devices.

  By default the devices are taken host by host, and each row of the mesh (the devices that
  hold the same rows of a batch) must lie on one host, since every host feeds its own rows.
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  devices = list(devices)
  if data < 1 or model < 1 or data * model > len(devices):
    raise ValueError(f"a {data}x{model} mesh needs {data * model} devices, "
                     f"{len(devices)} available")
  grid = np.array(devices[:data * model], dtype=object).reshape(data, model)
  for row in grid:
    if len({d.process_index for d in row}) > 1:
      raise ValueError(f"a {data}x{model} mesh puts one row of each batch on several hosts "
                       f"({jax.local_device_count()} devices per host): the 'model' axis "
                       "must divide the devices per host")
  return Mesh(grid, ("data", "model"))


def logical_partition_specs(variables: Any) -> Any:
  """Logical PartitionSpecs (axis names) of a boxed variables pytree; unboxed arrays get P()."""
  return nn.get_partition_spec(variables)


def param_shardings(abstract_variables: Any, mesh: Mesh, rules: LogicalAxisRules) -> Any:
  """NamedShardings for the (boxed) variables from `jax.eval_shape(model.init, ...)`.

  The result has the structure of the unboxed variables, one `NamedSharding` per array.
  """
  specs = logical_partition_specs(abstract_variables)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def mesh_partition_specs(abstract_variables: Any, rules: LogicalAxisRules) -> Any:
  """Mesh-axis PartitionSpecs for the (boxed) variables, e.g. P(None, 'model')."""
  return nn.logical_to_mesh(logical_partition_specs(abstract_variables), rules)


def is_fully_annotated(abstract_variables: Any) -> bool:
  """Whether every array leaf carries logical axis names (one name per dimension)."""
  leaves = jax.tree_util.tree_leaves(abstract_variables,
                                     is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return all(isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim
             for leaf in leaves)


def sharding_of(shardings: Any, path: str) -> NamedSharding:
  """The sharding at a '/'-separated path, e.g. 'params/encoder/layers_0/mlp/wi_0/kernel'."""
  node = shardings
  for key in path.split("/"):
    node = node[key]
  return node

"""Tests of the T5X logical-axis rules and parameter shardings on an 8-device (2x4) CPU mesh.

The fake devices need XLA_FLAGS set before jax is imported, and another test module may
already have imported jax, so the mesh checks run in a fresh Python subprocess.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from sbs_jax.model.partitioning import standard_logical_axis_rules

REPO = pathlib.Path(__file__).resolve().parents[1]

_MESH_SCRIPT = r"""
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sbs_jax.model import partitioning
from sbs_jax.model.config import config_for
from sbs_jax.model.network import Transformer

assert jax.device_count() == 8, jax.devices()
model = Transformer(config_for("tiny"))
tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 6), 2, 512)
abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens, tokens)
mesh = partitioning.make_mesh(2, 4)
flat = lambda tree: {"/".join(k.key for k in path): leaf for path, leaf in
                     jax.tree_util.tree_flatten_with_path(
                         tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]}
report = {"mesh": dict(mesh.shape),
          "logical": {k: list(v) for k, v in flat(nn.get_partition_spec(abstract)).items()}}
params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens, tokens, tokens))["params"]
reference = np.asarray(jax.jit(model.apply)({"params": params}, tokens, tokens, tokens))
for dims in (1, 2):
  rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=dims)
  shardings = partitioning.param_shardings(abstract, mesh, rules)
  placed = jax.device_put(params, shardings["params"])
  # Run the model sharded, with its activation constraints active.
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    logits = jax.jit(model.apply)({"params": placed}, tokens, tokens, tokens)
  report[f"{dims}d"] = {
      "specs": {k: [list(a) if isinstance(a, tuple) else a for a in s.spec]
                for k, s in flat(shardings).items()},
      "placed": {k: [a for a in v.sharding.spec] for k, v in flat({"params": placed}).items()},
      "max_abs_diff": float(np.max(np.abs(np.asarray(logits) - reference))),
  }
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def mesh_report():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def _resolve(logical_axes, rules):
  """Independent re-implementation of rule resolution: first rule whose mesh axis is unused."""
  used, resolved = set(), []
  for name in logical_axes:
    mesh_axis = None
    for rule_name, rule_axis in rules:
      if rule_name == name and (rule_axis is None or rule_axis not in used):
        mesh_axis = rule_axis
        break
    if mesh_axis is not None:
      used.add(mesh_axis)
    resolved.append(mesh_axis)
  return resolved


def test_rules_tables_match_t5x():
  one_d = dict(standard_logical_axis_rules())
  assert one_d == {"batch": "data", "vocab": "model", "embed": None, "mlp": "model",
                   "heads": "model", "kv": None, "joined_kv": "model", "relpos_buckets": None,
                   "abspos_buckets": None, "length": None, "layers": None, "stack": None,
                   "mlp_activations": None}
  assert ("embed", "data") in standard_logical_axis_rules(parameter_partitioning_dims=2)
  both = standard_logical_axis_rules(2, 2)
  assert both.index(("embed", "model")) < both.index(("embed", "data"))
  assert standard_logical_axis_rules(additional_rules=[("x", "data")])[-1] == ("x", "data")
  with pytest.raises(ValueError):
    standard_logical_axis_rules(3, 1)


def test_mesh_is_2x4_and_every_param_is_annotated(mesh_report):
  assert mesh_report["mesh"] == {"data": 2, "model": 4}
  logical = mesh_report["logical"]
  assert len(logical) == 52 and all(logical.values())


@pytest.mark.parametrize("dims", [1, 2])
def test_param_shardings_follow_rules(mesh_report, dims):
  rules = standard_logical_axis_rules(parameter_partitioning_dims=dims)
  specs = mesh_report[f"{dims}d"]["specs"]
  expected = {path: _resolve(axes, rules) for path, axes in mesh_report["logical"].items()}
  assert specs == expected
  assert mesh_report[f"{dims}d"]["placed"] == expected  # the arrays really are laid out so
  assert mesh_report[f"{dims}d"]["max_abs_diff"] < 1e-4  # and compute the same logits


def test_param_shardings_by_hand(mesh_report):
  one, two = mesh_report["1d"]["specs"], mesh_report["2d"]["specs"]
  wi_0 = "params/encoder/layers_0/mlp/wi_0/kernel"
  assert one[wi_0] == [None, "model"] and two[wi_0] == ["data", "model"]
  wo = "params/decoder/layers_1/mlp/wo/kernel"
  assert one[wo] == ["model", None] and two[wo] == ["model", "data"]
  query = "params/decoder/layers_0/self_attention/query/kernel"
  assert one[query] == [None, "model"] and two[query] == ["data", "model"]
  embedding = "params/token_embedder/embedding"
  assert one[embedding] == ["model", None] and two[embedding] == ["model", "data"]
  logits = "params/decoder/logits_dense/kernel"
  assert one[logits] == [None, "model"] and two[logits] == ["data", "model"]
  relpos = "params/encoder/relpos_bias/rel_embedding"
  assert one[relpos] == ["model", None] == two[relpos]
  scale = "params/encoder/encoder_norm/scale"
  assert one[scale] == [None] and two[scale] == ["data"]

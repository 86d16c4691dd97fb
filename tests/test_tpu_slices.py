"""Cloud TPU slice names: accelerator types and topologies parse; bad names get one error."""

import pytest

from sbs_jax.errors import SbsError
from sbs_jax.perf import tpu_slices


@pytest.mark.parametrize("name,topology,chips,hbm", [
    ("v4-8", "v4:2x2x1", 4, 32.0),
    ("v4-16", "v4:2x2x2", 8, 32.0),
    ("v4-32", "v4:2x2x4", 16, 32.0),
    ("v4-64", "v4:2x4x4", 32, 32.0),
    ("v4-128", "v4:4x4x4", 64, 32.0),
    ("v4-512", "v4:4x8x8", 256, 32.0),
    ("v4-4096", "v4:8x16x16", 2048, 32.0),
    ("v5p-8", "v5:2x2x1", 4, 95.0),
    ("v5p-128", "v5:4x4x4", 64, 95.0),
    ("v5e-1", "v5e:1x1", 1, 16.0),
    ("v5litepod-4", "v5e:2x2", 4, 16.0),
    ("v5e-8", "v5e:2x4", 8, 16.0),
    ("v5e-32", "v5e:4x8", 32, 16.0),
    ("v5e-256", "v5e:16x16", 256, 16.0),
    ("v6e-16", "v6e:4x4", 16, 32.0),
    ("V4-64", "v4:2x4x4", 32, 32.0),
    ("v4:4x4x12", "v4:4x4x12", 192, 32.0),  # v4-384: not a power of two, given as a shape
    ("v5e:2x4", "v5e:2x4", 8, 16.0),
])
def test_slice_names_parse(name, topology, chips, hbm):
  tpu = tpu_slices.parse(name)
  assert (tpu.topology_name, tpu.chips, tpu.hbm_gib) == (topology, chips, hbm)


def test_hosts_hold_four_chips_except_single_host_v5e():
  assert tpu_slices.parse("v4-64").chips_per_host == (2, 2, 1)
  assert tpu_slices.parse("v5e-8").chips_per_host == (2, 4, 1)
  assert tpu_slices.parse("v5e-16").chips_per_host == (2, 2, 1)


@pytest.mark.parametrize("name,message", [
    ("v3-8", "unknown TPU slice 'v3-8'"),
    ("tpu", "unknown TPU slice"),
    ("v4-6", "not a Cloud TPU slice with a default shape"),  # 3 chips
    ("v4-4", "not a Cloud TPU slice"),  # v4 slices start at 4 chips
    ("v4-8192", "not a Cloud TPU slice"),
    ("v4-384", "give the topology, e.g. --topology v4:4x4x12"),
    ("v5e-2", "not a Cloud TPU slice"),
    ("v5e-512", "not a Cloud TPU slice"),
    ("v4-x", "counts cores"),
    ("v4:2x2", "v4 takes 3 axes"),
    ("v5p:2x2x0", "v5p takes 3 axes"),
    ("v5e:2x2x1", "v5e takes 2 axes"),
])
def test_bad_names_get_one_clear_error(name, message):
  with pytest.raises(SbsError, match=message.replace("(", r"\(")):
    tpu_slices.parse(name)

"""Cloud TPU slices by name: `v4-64`, `v5e-16` (`v5litepod-16`), `v5p-8`, `v6e-4`, or an
explicit topology such as `v4:2x4x4`; the compile-only devices of a slice, for compiling
TPU programs on a machine without TPUs (libtpu from the `tpu` extra).

Accelerator type names count TensorCores: a v4 or v5p chip has two, joined into one JAX
device ("megacore"), so `v4-64` is 32 chips (32 devices); a v5e or v6e chip has one, so
`v5e-16` is 16 chips. The default physical shapes are Cloud TPU's: 2x2x1 for 4 chips, then
the shortest axis doubles (2x2x2, 2x2x4, 2x4x4, 4x4x4, ...); 2-D for v5e/v6e (2x2, 2x4,
4x4, 4x8, ...). Other shapes (v4-384 is 4x4x12) are given explicitly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from sbs_jax.errors import SbsError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation as libtpu and Cloud TPU name it."""
  topology_prefix: str  # libtpu's topology names: "v4:2x2x1"
  cores_per_chip: int  # accelerator type names count cores
  dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
  chip_config: str  # "megacore": both cores of a chip are one device
  hbm_gib: float  # memory of one chip (Cloud TPU's system architecture pages)
  min_chips: int
  max_chips: int


GENERATIONS = {
    "v4": Generation("v4", 2, 3, "megacore", 32.0, 4, 2048),
    "v5p": Generation("v5", 2, 3, "megacore", 95.0, 4, 8960),
    "v5e": Generation("v5e", 1, 2, "default", 16.0, 1, 256),
    "v6e": Generation("v6e", 1, 2, "default", 32.0, 1, 256),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """A slice: its generation, physical shape (chips along each axis) and per-chip HBM."""
  name: str
  generation: str
  shape: tuple[int, ...]

  @property
  def spec(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def hbm_gib(self) -> float:
    return self.spec.hbm_gib

  @property
  def topology_name(self) -> str:
    """libtpu's name of the topology, e.g. "v4:2x4x4"."""
    return f"{self.spec.topology_prefix}:{'x'.join(map(str, self.shape))}"

  @property
  def chips_per_host(self) -> tuple[int, int, int]:
    """Chips per host along each axis: 4 (2x2) on every generation's multi-host slices;
    a single v5e/v6e host holds up to 8 chips (2x4)."""
    if self.spec.dims == 2 and self.chips <= 8:
      return (self.shape[0], self.shape[1], 1)
    return (2, 2, 1)


def default_shape(chips: int, dims: int) -> tuple[int, ...] | None:
  """Cloud TPU's default shape of a slice of `chips` chips (a power of two), else None."""
  if chips < 1 or chips & (chips - 1) or chips in (2,):
    return None
  if chips == 1:
    return (1,) * dims
  shape = [2, 2] + [1] * (dims - 2)
  while math.prod(shape) < chips:
    smallest = min(shape)
    last = max(i for i, d in enumerate(shape) if d == smallest)
    shape[last] *= 2
  return tuple(shape)


def parse(name: str) -> TpuSlice:
  """A slice from an accelerator type (`v4-64`) or a topology (`v4:2x4x4`); one clear
  error for anything else."""
  text = name.strip().lower()
  known = "v4-8 ... v4-4096, v5p-8 ... v5p-8192, v5e-1 ... v5e-256 (or v5litepod-N), " \
          "v6e-1 ... v6e-256"
  m = re.fullmatch(r"(v\d+[a-z]*)([-:])([0-9x]+)", text)
  generation = ALIASES.get(m.group(1), m.group(1)) if m else None
  if generation not in GENERATIONS:
    raise SbsError(f"unknown TPU slice {name!r}: use an accelerator type ({known}) or a "
                   "topology such as v4:2x4x4")
  spec = GENERATIONS[generation]
  if m.group(2) == ":":
    shape = tuple(int(d) for d in m.group(3).split("x") if d.isdigit())
    if len(shape) != spec.dims or "x".join(map(str, shape)) != m.group(3) or min(shape) < 1:
      raise SbsError(f"bad topology {name!r}: {generation} takes {spec.dims} axes of 1 or more "
                     f"chips, e.g. "
                     f"{generation}:{'x'.join(['2'] * spec.dims)}")
    return TpuSlice(name, generation, shape)
  if not m.group(3).isdigit():
    raise SbsError(f"bad TPU slice {name!r}: the number after '-' counts cores, e.g. v4-64")
  cores = int(m.group(3))
  chips, rest = divmod(cores, spec.cores_per_chip)
  fits_range = not rest and spec.min_chips <= chips <= spec.max_chips
  shape = default_shape(chips, spec.dims) if fits_range else None
  if shape is None:
    raise SbsError(f"{name!r} is not a Cloud TPU slice with a default shape ({known}); for "
                   f"other sizes give the topology, e.g. --topology {generation}:4x4x12"
                   if spec.dims == 3 else
                   f"{name!r} is not a Cloud TPU slice with a default shape ({known})")
  return TpuSlice(name, generation, shape)


def quiet_libtpu() -> None:
  """Environment for libtpu on a machine without TPU chips: no cloud metadata queries,
  one worker (this machine), and no exclusive lock (other JAX processes here may hold it)."""
  from sbs_jax import console  # pylint: disable=import-outside-toplevel
  if console.tpu_chips_present():
    return
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def devices(tpu: TpuSlice) -> list:
  """The slice's compile-only JAX devices, ordered host by host as the trainer orders them."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("libtpu") is None:
    raise SbsError("compiling for a TPU slice needs libtpu: pip install -e '.[tpu]' "
                   "(the jax[tpu] of this jax version)")
  quiet_libtpu()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=tpu.topology_name, chip_config_name=tpu.spec.chip_config,
      chips_per_host_bounds=tpu.chips_per_host, num_slices=1)
  return sorted(desc.devices, key=lambda d: (d.process_index, d.id))

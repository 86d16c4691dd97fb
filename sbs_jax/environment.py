"""What a result was computed with: Python, the numeric packages' versions and the backend.

Recorded in every results.json, so that two runs of one command that disagree can be told
apart by their environment (the trainer is bit-for-bit reproducible for the same inputs and
versions; a rebuilt virtualenv with other versions is not), and `sbs report` says when the
cells of one sweep ran under different ones.
"""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow",
            "tensorflow-cpu", "tensorflow-text", "seqio", "sentencepiece", "libtpu")


def versions() -> dict[str, str]:
  """{package: version} of those installed, plus the Python version."""
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return out


def describe(jax_module=None) -> dict:
  """versions(), and the backend and device kind when `jax` is given (already imported)."""
  env = {"versions": versions(), "machine": platform.machine()}
  if jax_module is not None:
    devices = jax_module.devices()
    env["backend"] = jax_module.default_backend()
    env["device_kind"] = devices[0].device_kind if devices else None
    env["devices"] = jax_module.device_count()
  return env


def differing(environments: dict[str, dict | None]) -> dict[str, dict[str, str]]:
  """{package: {cell: version}} for each package whose version is not the same in every
  environment that records one (cells without a record are left out)."""
  known = {cell: env.get("versions", {}) for cell, env in environments.items()
           if isinstance(env, dict)}
  names = sorted({name for v in known.values() for name in v})
  out = {}
  for name in names:
    seen = {cell: v.get(name, "absent") for cell, v in known.items()}
    if len(set(seen.values())) > 1:
      out[name] = seen
  return out

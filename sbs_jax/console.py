"""A quiet start: native libraries' start-up lines that say nothing to a user are dropped.

TensorFlow, XLA and libtpu write to file descriptor 2 from C++ before any Python logging is
set up (absl's "before InitializeLog" banner, "Could not find cuda drivers" on a CPU
machine, CPU-feature notices, libtpu's metadata-server complaints where there is no TPU).
`import_quietly()` imports the heavy libraries with descriptor 2 captured and writes back
every line that is not one of those known notices, so warnings and errors still show.
`sbs -v` skips the filter.

Lines that native code prints later, when JAX starts its backends, are not filtered; the
one source of those on a CPU machine (libtpu, installed but without chips) is kept from
starting instead (`quiet_environment`).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import sys
import tempfile

# Lines (or line starts) that carry no information for a user of this package.
NOISE = [re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR$",
    r"^WARNING: Logging before InitGoogle\(\) is written to STDERR$",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .*rebuild TensorFlow",
    r"oneDNN custom operations are on",
    r"Unable to register (cuDNN|cuFFT|cuBLAS) factory",
    r"computation placer already registered",
    r"failed call to cuInit",
    r"Failed to find host bounds for accelerator type",
)]


def is_noise(line: str) -> bool:
  return any(p.search(line) for p in NOISE)


def tpu_chips_present() -> bool:
  """Whether this machine has TPU chips (v2-v4: /dev/accel*; v5e and later: /dev/vfio/N)."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def gpu_present() -> bool:
  """Whether this machine shows a GPU (NVIDIA: /dev/nvidia*; AMD: /dev/kfd)."""
  return bool(glob.glob("/dev/nvidia*") or os.path.exists("/dev/kfd"))


def quiet_environment() -> None:
  """Environment defaults that silence libraries without changing what they compute."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # With libtpu installed (the `tpu` extra, for compiling TPU programs on a laptop) but no
  # TPU here, libtpu asks a cloud metadata server that does not exist and prints errors.
  # On a TPU VM the query is needed (worker addresses), so it is only skipped without chips.
  if importlib.util.find_spec("libtpu") is not None and not tpu_chips_present():
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # JAX still starts libtpu's client when its first computation runs (after the import
    # filter): on a machine with neither TPU chips nor a GPU that prints "Failed to find
    # host bounds ..." and "INVALID_ARGUMENT: ... worker hostname" and finds no device. CPU
    # is then the only backend there can be. A JAX_PLATFORMS set by the user (even empty)
    # and JAX_FORCE_TPU_INIT are respected; with a GPU, JAX chooses as before.
    if ("JAX_PLATFORMS" not in os.environ and "JAX_FORCE_TPU_INIT" not in os.environ
        and not gpu_present()):
      os.environ["JAX_PLATFORMS"] = "cpu"


@contextlib.contextmanager
def native_stderr_filtered():
  """Captures descriptor 2 in the block; writes back what is not known noise."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode("utf-8", errors="replace").splitlines()
      kept = [line for line in lines if not is_noise(line)]
      if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()


def import_quietly(modules=("tensorflow", "jax")) -> None:
  """Imports the heavy libraries (when installed) with their start-up notices dropped.

  TensorFlow only feeds data here: it is kept off GPUs, so that it neither takes the
  memory JAX needs nor reports a failed `cuInit` later, on a machine without one.
  """
  quiet_environment()
  with native_stderr_filtered():
    for name in modules:
      if importlib.util.find_spec(name) is not None:
        module = importlib.import_module(name)
        if name == "tensorflow":
          module.config.set_visible_devices([], "GPU")

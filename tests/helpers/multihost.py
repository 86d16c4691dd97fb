"""A cluster of `sbs train` processes on this machine: hosts of one JAX cluster over CPU
devices, waited for by what happens (never by a time budget; HANG_GUARD only catches a
hang)."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, xla_devices

# A guard against a hung cluster only, never a budget the work must fit: a run takes about
# a minute on 2 idle cores and several times that on a loaded machine. Every wait below
# waits for something to happen (a process ends, a marker appears), not for time to pass.
HANG_GUARD = float(os.environ.get("SBS_TEST_HANG_GUARD", 1800))


def cluster_env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
              XLA_FLAGS=xla_devices(devices))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def tail(path, n=3000) -> str:
  return path.read_text(errors="replace")[-n:]


def wait_for(condition, procs, what: str, logs=()) -> None:
  """Waits until `condition()` holds; fails (naming `what`) if a process ends first or
  the hang guard runs out."""
  deadline = time.monotonic() + HANG_GUARD
  while not condition():
    if any(p.poll() is not None for p in procs):
      pytest.fail(f"a host ended (codes {[p.poll() for p in procs]}) before {what}:\n"
                  + "\n".join(tail(log) for log in logs))
    if time.monotonic() > deadline:
      pytest.fail(f"no {what} after {HANG_GUARD:.0f} s: the cluster hangs")
    time.sleep(0.5)


def wait_all(procs, expected: int = 0) -> list:
  """Exit codes once all have ended, or one has ended with another code than `expected`
  (a peer would wait for it in a collective); None for a process still running then, or
  when the hang guard runs out. Hosts ending with `expected` are waited for one by one,
  however far apart they end."""
  deadline = time.monotonic() + HANG_GUARD
  while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
    if any(p.returncode not in (None, expected) for p in procs):
      break
    time.sleep(0.5)
  return [p.poll() for p in procs]


@contextlib.contextmanager
def two_hosts(flags: list[str], logs: list):
  """`sbs train FLAGS` as hosts 0 and 1 of one cluster, each logging to its file; yields
  the processes and kills any still running on the way out."""
  address = f"127.0.0.1:{free_port()}"
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w", encoding="utf-8") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sbs_jax.cli", "train", "--coordinator_address", address,
             "--num_processes", "2", "--process_id", str(i), *flags],
            cwd=REPO, env=cluster_env(2), stdout=out, stderr=subprocess.STDOUT))
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()

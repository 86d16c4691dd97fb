"""One `sbs train` per model dir: a second run on the same dir is refused in one line.

Two runs on one dir would both write checkpoints, and orbax in one would delete the other's
unfinished ones. `sbs eval` (and `sbs predict`) only read and take no lock: the parameters
under `params/` are replaced whole (written aside, then renamed), so they read the best
step so far while training runs.

Local dirs: an exclusive `fcntl` lock on `<model_dir>/.lock`. The kernel releases it when
the process ends however it ends, so a killed run can be rerun (and resumes) at once.

gs:// (or any URL): `fcntl` cannot lock an object store, so a lease object
`<model_dir>/.lease.json` names the owner (host, pid, start time) and holds a heartbeat that
a background thread refreshes every HEARTBEAT_S seconds. A new run refuses while the owner
lives: on the same host, while its pid is alive; on another host, while its heartbeat is
younger than STALE_S. A stale lease (a killed or vanished run) is taken over with a log
line. Two runs that start within a second of each other are told apart by reading the lease
back after writing it: the last writer keeps it, the other refuses. (An object store without
conditional writes through tf.io.gfile allows no stronger guarantee.)

Multi-host runs: only process 0 takes the lock (it is the only one that writes shared files);
its outcome reaches the other processes before any collective work (see run_dir.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import tensorflow as tf

from sbs_jax.errors import SbsError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
LEASE_FILE = ".lease.json"
NAMES = (LOCK_FILE, LEASE_FILE)  # the lock's own files: not part of a run's contents
HEARTBEAT_S = 30.0
STALE_S = 180.0  # six missed heartbeats: room for a slow object store and clock skew


def _busy(model_dir: str, holder: str) -> SbsError:
  return SbsError(f"MODEL_DIR {model_dir} is in use by another `sbs train` ({holder}): "
                  "wait for it to finish (rerunning the same command then resumes or "
                  "finishes it), stop it first, or use another MODEL_DIR; `sbs eval` may "
                  "read the dir meanwhile")


class LocalLock:
  """An exclusive fcntl lock on <model_dir>/.lock, with the holder's pid written in it."""

  def __init__(self, model_dir: str):
    import fcntl  # pylint: disable=import-outside-toplevel
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_FILE)
    while True:
      f = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise _busy(model_dir, holder) from None
      # The file may have been removed (and another made) by a run that released it
      # between our open and flock: then ours locks nothing, and we try again.
      try:
        same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      f.close()
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f

  def release(self) -> None:
    if self._file is None:
      return
    try:
      os.remove(self.path)  # while still held: nobody else can hold this file now
    except OSError:
      pass
    self._file.close()  # releases the lock
    self._file = None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


class Lease:
  """A lease object <model_dir>/.lease.json on an object store, kept fresh by a thread."""

  def __init__(self, model_dir: str, settle_s: float = 1.0):
    self.model_dir = model_dir
    self.path = f"{model_dir}/{LEASE_FILE}"
    self._stop = threading.Event()
    self._thread = None
    now = time.time()
    self._lease = {"host": socket.gethostname(), "pid": os.getpid(), "started": now,
                   "heartbeat": now, "token": uuid.uuid4().hex}
    current = self._read()
    if current is not None:
      live = self._alive(current)
      if live:
        raise _busy(model_dir, live)
      log.warning("%s: taking over the stale lease of pid %s on %s (heartbeat %.0f s ago)",
                  model_dir, current.get("pid"), current.get("host"),
                  now - float(current.get("heartbeat", 0)))
    self._write()
    time.sleep(settle_s)
    current = self._read()
    if current is None or current.get("token") != self._lease["token"]:
      raise _busy(model_dir, self._describe(current or {}) or "a run that started with "
                  "this one")
    self._thread = threading.Thread(target=self._beat, name="sbs-lease", daemon=True)
    self._thread.start()

  @staticmethod
  def _describe(lease: dict) -> str:
    if not lease:
      return ""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(lease.get("started",
                                                                                 0))))
    return f"pid {lease.get('pid')} on {lease.get('host')}, since {started}"

  def _alive(self, lease: dict) -> str:
    """The owner's description when it is alive, else ''."""
    try:
      pid, host, beat = int(lease["pid"]), str(lease["host"]), float(lease["heartbeat"])
    except (KeyError, TypeError, ValueError):
      return ""  # unreadable: treated as stale
    if host == socket.gethostname():
      alive = _pid_alive(pid)
    else:
      alive = time.time() - beat < STALE_S
    return self._describe(lease) if alive else ""

  def _read(self) -> dict | None:
    try:
      with tf.io.gfile.GFile(self.path) as f:
        return json.loads(f.read())
    except tf.errors.NotFoundError:
      return None
    except (ValueError, tf.errors.OpError):
      return {}  # half-written or unreadable: stale

  def _write(self) -> None:
    with tf.io.gfile.GFile(self.path, "w") as f:
      f.write(json.dumps(self._lease))

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        current = self._read()
        if current and current.get("token") != self._lease["token"]:
          log.error("%s: the lease was taken over by %s; this run no longer holds the "
                    "model dir", self.model_dir, self._describe(current))
          return
        self._lease["heartbeat"] = time.time()
        self._write()
      except Exception as e:  # pylint: disable=broad-except  # keep beating; log why not
        log.warning("%s: could not refresh the lease (%s)", self.model_dir, e)

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join(timeout=10)
    self._thread = None
    try:
      current = self._read()
      if current and current.get("token") == self._lease["token"]:
        tf.io.gfile.remove(self.path)
    except tf.errors.OpError as e:
      log.warning("%s: could not remove the lease (%s)", self.model_dir, e)


def acquire(model_dir: str):
  """The model dir's lock (LocalLock or Lease; call `release()`), or SbsError when another
  run holds it. The dir must exist."""
  if "://" in model_dir:
    return Lease(model_dir)
  return LocalLock(model_dir)

"""One process per job dir.

Local dirs: an exclusive `fcntl` lock on a file (`<dir>/.lock` for a whole dir). The kernel
releases it when the process ends however it ends, so a killed job can be rerun (and
resumes) at once.

gs:// (or any URL): `fcntl` cannot lock an object store, so a lease object
`<dir>/.lease.json` names the owner (host, pid, start time) and holds a heartbeat that a
background thread refreshes every HEARTBEAT_S seconds. A new job refuses while the owner
lives: on the same host, while its pid is alive; on another host, while its heartbeat is
younger than STALE_S. A stale lease (a killed or vanished job) is taken over with a log
line. Two jobs that start within a second of each other are told apart by reading the lease
back after writing it: the last writer keeps it, the other refuses. (An object store without
conditional writes through tf.io.gfile allows no stronger guarantee.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable, Iterator

from sbs_jax.errors import SbsError
from sbs_jax.jobdir.files import pid_alive

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
LEASE_FILE = ".lease.json"
NAMES = (LOCK_FILE, LEASE_FILE)  # the lock's own files: not part of a dir's contents
HEARTBEAT_S = 30.0
STALE_S = 180.0  # six missed heartbeats: room for a slow object store and clock skew


class LocalLock:
  """An exclusive fcntl lock on the file `path`, with the holder's pid written in it;
  `busy(holder)` makes the error raised while another process holds it. `release()` (or
  `close()`) removes the file and unlocks."""

  def __init__(self, path, busy: Callable[[str], SbsError]):
    import fcntl  # pylint: disable=import-outside-toplevel
    self.path = str(path)
    while True:
      f = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise busy(holder) from None
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

  close = release


class Lease:
  """A lease object <directory>/.lease.json on an object store, kept fresh by a thread;
  `busy(holder)` makes the error raised while a live owner holds it."""

  def __init__(self, directory: str, busy: Callable[[str], SbsError], settle_s: float = 1.0):
    self.directory = directory
    self.path = f"{directory}/{LEASE_FILE}"
    self._stop = threading.Event()
    self._thread = None
    now = time.time()
    self._lease = {"host": socket.gethostname(), "pid": os.getpid(), "started": now,
                   "heartbeat": now, "token": uuid.uuid4().hex}
    current = self._read()
    if current is not None:
      live = self._alive(current)
      if live:
        raise busy(live)
      log.warning("%s: taking over the stale lease of pid %s on %s (heartbeat %.0f s ago)",
                  directory, current.get("pid"), current.get("host"),
                  now - float(current.get("heartbeat", 0)))
    self._write()
    time.sleep(settle_s)
    current = self._read()
    if current is None or current.get("token") != self._lease["token"]:
      raise busy(self._describe(current or {}) or "a run that started with this one")
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
      alive = pid_alive(pid)
    else:
      alive = time.time() - beat < STALE_S
    return self._describe(lease) if alive else ""

  def _read(self) -> dict | None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
      with tf.io.gfile.GFile(self.path) as f:
        return json.loads(f.read())
    except tf.errors.NotFoundError:
      return None
    except (ValueError, tf.errors.OpError):
      return {}  # half-written or unreadable: stale

  def _write(self) -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    with tf.io.gfile.GFile(self.path, "w") as f:
      f.write(json.dumps(self._lease))

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        current = self._read()
        if current and current.get("token") != self._lease["token"]:
          log.error("%s: the lease was taken over by %s; this run no longer holds the "
                    "model dir", self.directory, self._describe(current))
          return
        self._lease["heartbeat"] = time.time()
        self._write()
      except Exception as e:  # pylint: disable=broad-except  # keep beating; log why not
        log.warning("%s: could not refresh the lease (%s)", self.directory, e)

  def release(self) -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
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
      log.warning("%s: could not remove the lease (%s)", self.directory, e)


def acquire(directory: str, busy: Callable[[str], SbsError]):
  """The lock of a whole directory (a LocalLock on <directory>/.lock, or a Lease on an
  object store; call `release()`), or `busy(holder)` raised when another process holds it.
  The directory must exist."""
  if "://" in directory:
    return Lease(directory, busy)
  return LocalLock(os.path.join(directory, LOCK_FILE), busy)


def lock_exclusively(path, busy: str) -> LocalLock:
  """An exclusive lock on the local file `path` (`close()` releases it), or SbsError(busy)
  when another process holds it."""
  return LocalLock(path, lambda holder: SbsError(f"{busy} ({holder})"))


@contextlib.contextmanager
def held_if_free(path) -> Iterator[bool]:
  """Holds the lock on the local file `path` for the block and yields True; yields False
  (holding nothing) while another process holds it."""
  try:
    lock = LocalLock(path, SbsError)
  except SbsError:
    yield False
    return
  try:
    yield True
  finally:
    lock.release()

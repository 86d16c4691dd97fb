"""`sbs` run in the test's own process: `run_sbs_here`, for tests that only check a refusal."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os

import gin

from tests.helpers import REPO


@dataclasses.dataclass
class Finished:
  """What the tests read from a subprocess.CompletedProcess."""
  args: list
  returncode: int
  stdout: str
  stderr: str


def run_sbs_here(*args, env=None) -> Finished:
  """Runs `sbs ARGS` as `sbs_jax.cli.main(ARGS)` in this process (from the repo root, as
  `run_sbs` does) and returns its exit code and what it wrote to sys.stdout and sys.stderr.

  It saves the 5-7 s that a new process spends importing TensorFlow and JAX. The working
  directory, os.environ (`env` is applied for the call; the variables the CLI sets itself,
  such as TF_CPP_MIN_LOG_LEVEL and JAX_PLATFORMS, are removed again), gin's config and the
  root logger's handlers and levels are as before when it returns. The root logger has no
  handlers during the call (pytest's are put back after), so the CLI's logging.basicConfig
  writes its log lines to the captured stderr as in a process of its own. An argparse exit
  becomes its code.

  Use `run_sbs` (a real process) instead for:
  - what a real process prints at the native level (descriptor 2, start-up notices:
    tests/test_cli.py); only Python-level output is captured here;
  - tests that kill the process, send it signals or set resource limits (rlimits);
  - multi-host runs (jax.distributed is initialized once per process);
  - JAX settings read once at start-up (JAX_PLATFORMS, XLA_FLAGS device counts): JAX is
    already started in this process, so such an `env` has no effect here;
  - commands whose seqio tasks or vocabulary come from $SBS_ANNOTATION_DIR / $SBS_VOCAB
    values other than those this process already used, or whose output lists the registered
    tasks: the benchmarks' tasks are registered once per process at `import tasks`, the
    datasets of every annotation dir an earlier test named stay registered (tasks/
    discovery.py), and the tasks' shared vocabulary loads its model at first use and keeps
    it (sbs_jax/data/vocab.py ConfiguredVocabulary), so a later env does not apply;
  - anything that trains, or runs long: an exception other than SystemExit propagates.
  """
  from sbs_jax import cli  # pylint: disable=import-outside-toplevel
  argv = [str(a) for a in args]
  saved_env = dict(os.environ)
  saved_cwd = os.getcwd()
  root = logging.getLogger()
  saved_handlers, saved_level = list(root.handlers), root.level
  noisy = {name: logging.getLogger(name).level for name in ("absl", "tensorflow", "h5py", "jax")}
  out, err = io.StringIO(), io.StringIO()
  gin.clear_config()
  try:
    for handler in saved_handlers:  # as in a new process: basicConfig adds its own
      root.removeHandler(handler)
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    os.chdir(REPO)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = cli.main(argv)
      except SystemExit as e:  # argparse's usage errors (2) and --help (0)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
          print(e.code, file=err)
  finally:
    os.chdir(saved_cwd)
    os.environ.clear()
    os.environ.update(saved_env)
    for handler in root.handlers[:]:
      root.removeHandler(handler)
    for handler in saved_handlers:
      root.addHandler(handler)
    root.setLevel(saved_level)
    for name, level in noisy.items():  # the CLI quiets these
      logging.getLogger(name).setLevel(level)
    gin.clear_config()
  return Finished(argv, 0 if code is None else code, out.getvalue(), err.getvalue())

"""The `sbs` command itself: fast help, a complete command table, a quiet start."""

import subprocess
import sys

from sbs_jax import cli, console
from tests.helpers import REPO, run_sbs


def test_every_listed_command_is_defined_by_its_module():
  parser = cli.build_parser()
  subparsers = next(a for a in parser._actions if a.dest == "command")  # pylint: disable=protected-access
  for name in cli.COMMANDS:
    defaults = subparsers.choices[name]._defaults  # pylint: disable=protected-access
    assert "func" in defaults, f"{name}: {cli.COMMANDS[name][0]} does not define it"


def test_help_imports_neither_tensorflow_nor_jax():
  code = ("import sys\nfrom sbs_jax import cli\ntry:\n  cli.main(['--help'])\n"
          "except SystemExit as e:\n  assert e.code == 0, e.code\n"
          "print(sorted(m for m in ('tensorflow', 'jax', 'seqio') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=120, check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]"
  assert "annotate" in out.stdout and "export-hf" in out.stdout


def test_a_failing_command_prints_its_error_and_nothing_else(tmp_path):
  # `sbs download --check_only` imports TensorFlow and JAX; their start-up notices
  # (absl banner, "Could not find cuda drivers", libtpu) used to come first.
  result = run_sbs("download", "--check_only", "--data_dir", tmp_path / "nothing")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"sbs download: error: {tmp_path / 'nothing'}: no benchmark folder found (expected one "
      "of cqa, svamp, esnli, anli1)"]


def test_noise_filter_keeps_real_messages():
  assert console.is_noise("WARNING: All log messages before absl::InitializeLog() is called "
                          "are written to STDERR")
  assert console.is_noise("I0000 00:00:1796104039.683695    5016 cudart_stub.cc:31] Could not "
                          "find cuda drivers on your machine, GPU will not be used.")
  assert not console.is_noise("E0000 some_op.cc:12] INVALID_ARGUMENT: shapes do not match")
  assert not console.is_noise("WARNING: disk almost full")


def test_native_lines_that_are_not_noise_get_through():
  code = ("import os\nfrom sbs_jax import console\nwith console.native_stderr_filtered():\n"
          "  os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called "
          "are written to STDERR\\n')\n  os.write(2, b'E0000 real problem\\n')\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=60, check=True)
  assert out.stderr.splitlines() == ["E0000 real problem"]


def test_a_command_that_uses_tensorflow_prints_no_native_notices(tmp_path, data_dir):
  # Writing TFRecords initialises TensorFlow's devices: on a machine without a GPU that
  # printed "failed call to cuInit" after the imports were done.
  result = run_sbs("annotate", "--dataset", "svamp", "--split", "test", "--teacher", "replay",
                   "--out_dir", tmp_path / "ann", "--data_dir", data_dir, "--no_progress")
  assert result.returncode == 0, result.stderr
  lines = result.stderr.splitlines()
  assert any("records:" in line for line in lines)
  assert [line for line in lines if console.is_noise(line) or "cuInit" in line] == []

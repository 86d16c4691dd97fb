"""launch/gpu_bench.sh: every command it would run on a lent GPU parses and passes its checks.

A lent GPU gives a session 15 minutes in all, so a typo in a flag found there costs the
session its measurement; the dry run prints the commands, checked here without a GPU.
"""

import argparse
import shlex
import subprocess

from sbs_jax.commands import bench as bench_command
from tests.helpers import REPO


def _dry_run_commands():
  out = subprocess.run(["bash", "launch/gpu_bench.sh", "--dry_run"], cwd=REPO, text=True,
                       capture_output=True, timeout=120, check=True).stdout
  return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ timeout")]


def test_every_bench_command_passes_the_argument_checks(tmp_path):
  commands = _dry_run_commands()
  module = "sbs_jax.commands.bench"
  benches = [c[c.index(module) + 1:] for c in commands if module in c]
  assert len(benches) >= 5
  sizes = set()
  for argv in benches:
    parser = argparse.ArgumentParser(prog="sbs")
    bench_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    args.out = str(tmp_path / "out.jsonl")  # the dry run's $OUT folder does not exist here
    assert bench_command.check_args(args)
    assert args.dtype == "bfloat16"
    sizes.add(args.size)
  assert {"base", "large"} <= sizes
  assert any("--reference" in a and "--inference" in a for a in benches)


def test_remat_memory_commands_parse():
  from launch import remat_memory  # pylint: disable=import-outside-toplevel
  remats = [c[c.index("launch/remat_memory.py") + 1:] for c in _dry_run_commands()
            if "launch/remat_memory.py" in c]
  assert remats
  for argv in remats:
    args = remat_memory.build_parser().parse_args(argv)
    assert len(args.shape.split(",")) == 2

"""`sbs predict --input_file` on two JAX processes (2 CPU devices each) joined by
`jax.distributed.initialize`: each host decodes its share of every batch (the data axis
spans both), host 0 writes one file, equal, row for row and in order, to that of one
process with 4 devices."""

import json
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO
from tests.helpers.multihost import cluster_env, free_port
from tests.helpers.predict import cqa_texts, make_model_dir, read_lines, write_rows

pytestmark = [pytest.mark.slow, pytest.mark.multihost]


TIMEOUT = 300  # seconds per run; a run takes well under a minute alone on 2 cores
FLAGS = ["--batch_size", "8", "--window", "16", "--max_decode_length", "6", "--no_progress"]


def _predict(model_dir, source, output, extra=()) -> list[str]:
  return [sys.executable, "-m", "sbs_jax.cli", "predict", "--model_dir", str(model_dir),
          "--input_file", str(source), "--output_file", str(output), *FLAGS, *extra]


def _finish(procs, timeout: float) -> list:
  """Exit codes once every process has ended or one has failed (its peer would wait for it
  in a collective); processes still running at the deadline are killed (code None)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    codes = [p.poll() for p in procs]
    if all(c is not None for c in codes) or any(codes):
      break
    time.sleep(0.2)
  codes = [p.poll() for p in procs]
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
  return codes


def test_two_hosts_write_the_one_host_file(tmp_path, data_dir):
  model_dir = make_model_dir(tmp_path, data_dir)
  texts = cqa_texts(data_dir, 43)
  source = write_rows(tmp_path / "rows.jsonl", [{"input": t, "id": f"q{i}"}
                                                for i, t in enumerate(texts)])
  one = subprocess.run(_predict(model_dir, source, tmp_path / "one.jsonl", ["--id_key", "id"]),
                       cwd=REPO, env=cluster_env(4), capture_output=True, text=True, timeout=TIMEOUT)
  assert one.returncode == 0, one.stderr[-3000:]

  address, logs, procs = f"127.0.0.1:{free_port()}", [], []
  for i in range(2):
    # pylint: disable-next=consider-using-with
    logs.append(open(tmp_path / f"host{i}.log", "w", encoding="utf-8"))
    procs.append(subprocess.Popen(
        _predict(model_dir, source, tmp_path / "two.jsonl",
                 ["--id_key", "id", "--coordinator_address", address, "--num_processes", "2",
                  "--process_id", str(i)]),
        cwd=REPO, env=cluster_env(2), stdout=logs[-1], stderr=subprocess.STDOUT))
  codes = _finish(procs, TIMEOUT)
  for log in logs:
    log.close()
  tails = "\n".join((tmp_path / f"host{i}.log").read_text()[-2000:] for i in range(2))
  assert codes == [0, 0], tails

  two = read_lines(tmp_path / "two.jsonl")
  assert [r["id"] for r in two] == [f"q{i}" for i in range(len(texts))]
  assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
  assert len({r["label"] for r in two}) > 5  # rows differ: a mix-up would show
  summary = json.loads((tmp_path / "host0.log").read_text().strip().splitlines()[-1])
  assert summary["rows"] == len(texts)
  assert '"output_file"' not in (tmp_path / "host1.log").read_text()  # host 1 was host 1
  assert not (tmp_path / ".two.jsonl.partial").exists()

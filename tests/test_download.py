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


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_readme_lamp_path_download_then_train(tmp_path, model_cache):
  """`python -m tapper_jax.data.download --task LaMP_2 --setting time --out DIR` against a
  local server gives the folder the trainer takes; a tiny run trains and evaluates on it."""
  import subprocess
  import sys
  from lamp_fixtures import write_setting
  src = write_setting(str(tmp_path / "official"), "LaMP_2M", "time")
  files = {}
  for split in ("train", "dev", "test"):
    for kind in ("questions", "outputs"):
      path = os.path.join(src, f"{split}_{kind}.json")
      if os.path.isfile(path) and not (split == "test" and kind == "outputs"):
        with open(path, "rb") as f:
          files[f"/time/LaMP_2/new/{split}/{split}_{kind}.json"] = f.read()
  _Handler.files, _Handler.break_first, _Handler.requests = files, set(), []
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  out = str(tmp_path / "LaMP_2_time")
  cmd = [sys.executable, "-m", "tapper_jax.data.download", "--task=LaMP_2", "--setting=time",
         f"--out={out}", f"--cache={tmp_path / 'cache'}",
         f"--base=http://127.0.0.1:{srv.server_address[1]}"]
  try:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "configs/lamp2.py:time" in r.stdout
    assert sorted(os.listdir(out)) == sorted(os.path.basename(k) for k in files)
    # Run again: the complete folder is reused, nothing is fetched or rewritten.
    n = len(_Handler.requests)
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert len(_Handler.requests) == n
  finally:
    srv.shutdown()
  with open(os.path.join(out, "dev_questions.json"), "w") as f:
    f.write("[]")  # a changed folder is never overwritten
  with pytest.raises(FileExistsError, match="refusing"):
    download.task_folder("LaMP_2", "time", out, cache=str(tmp_path / "cache"),
                         base="http://127.0.0.1:1")  # cached: no server needed
  os.remove(os.path.join(out, "dev_questions.json"))
  import shutil
  shutil.copyfile(os.path.join(str(tmp_path / "cache"), "time", "LaMP_2M", "dev",
                               "dev_questions.json"), os.path.join(out, "dev_questions.json"))
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
  import lamp2
  from tapper_jax.training.loop import train_and_evaluate
  c = lamp2.get_config("time")
  c.data.folder, c.model.name, c.progress = out, "tiny-random", False
  c.stage1.steps = c.stage2.steps = 1
  c.stage1.batch_size = c.stage2.batch_size = c.eval_batch_size = 2
  c.max_new_tokens = 2
  summary = train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["eval"]["questions"] > 0 and "TAP-PER" in summary["eval"]
  assert os.path.isfile(summary["predictions"]["TAP-PER"])
  # ... then predict the official test split, which has no golds.
  from tapper_jax.serving.predict import predict_file
  res = predict_file(str(tmp_path / "run"), os.path.join(out, "test_questions.json"),
                     str(tmp_path / "test_preds.json"), progress=False)
  assert res["questions"] > 0 and "scores" not in res
  with open(tmp_path / "test_preds.json") as f:
    assert len(json.load(f)["golds"]) == res["questions"]

"""Download of the official LaMP files by task, split and setting: cache, resume, checksum.

Files land in `{cache}/{setting}/{task}/{split}/{file}`. A transfer goes to `{file}.part` and is
renamed only when complete (length matches Content-Length, and the SHA-256 matches when one is
known), so the cache never holds half a file. An interrupted `.part` is resumed with an HTTP
Range request; a server that ignores Range restarts it. Each file's SHA-256 is recorded in
`{cache}/checksums.json` on first download and verified on every later use.

URL layout of the LaMP site (ciir.cs.umass.edu/downloads/LaMP), user-based and time-based:
  {base}/LaMP_{k}/{split}/{split}_{questions|outputs}.json
  {base}/time/LaMP_{k}/{split}/{split}_{questions|outputs}.json
LaMP-2 (movies, since v2) lives under LaMP_2/new/, the older news LaMP-2 (our LaMP_2N) under
LaMP_2/. Test outputs are not public: only questions exist for split "test".
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request

from tapper_jax.metrics import canonical_task

DEFAULT_BASE = "https://ciir.cs.umass.edu/downloads/LaMP"
_TASK_PATH = {"LaMP_1": "LaMP_1", "LaMP_2M": "LaMP_2/new", "LaMP_2N": "LaMP_2", "LaMP_3": "LaMP_3",
              "LaMP_4": "LaMP_4", "LaMP_5": "LaMP_5", "LaMP_6": "LaMP_6", "LaMP_7": "LaMP_7"}
SPLITS = ("train", "dev", "test")
SETTINGS = ("user", "time")


class DownloadError(RuntimeError):
  """A transfer that could not complete; the message names the URL and what arrived."""


def file_urls(task: str, split: str, setting: str, base: str = DEFAULT_BASE) -> dict[str, str]:
  t = canonical_task(task)
  if t not in _TASK_PATH:
    raise ValueError(f"task {task!r} has no official download")
  if split not in SPLITS or setting not in SETTINGS:
    raise ValueError(f"split {split!r} (one of {SPLITS}), setting {setting!r} (one of {SETTINGS})")
  root = f"{base.rstrip('/')}/{'time/' if setting == 'time' else ''}{_TASK_PATH[t]}/{split}"
  names = ["questions"] + (["outputs"] if split != "test" else [])
  return {f"{split}_{n}.json": f"{root}/{split}_{n}.json" for n in names}


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _fetch_once(url: str, part: str, timeout: float) -> tuple[int | None, int]:
  """Appends to `part` from where it stopped. Returns (expected total or None, bytes now held)."""
  have = os.path.getsize(part) if os.path.exists(part) else 0
  req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
  try:
    resp = urllib.request.urlopen(req, timeout=timeout)
  except urllib.error.HTTPError as e:
    if e.code == 416 and have:  # already complete
      return have, have
    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
  except (urllib.error.URLError, OSError) as e:
    raise DownloadError(f"{url}: cannot connect ({e})") from e
  with resp:
    if resp.status == 206:
      rng = resp.headers.get("Content-Range", "")  # bytes start-end/total
      total = int(rng.rsplit("/", 1)[1]) if "/" in rng and not rng.endswith("*") else None
      mode = "ab"
    else:  # 200: the server ignored Range; start over
      length = resp.headers.get("Content-Length")
      total, mode, have = (int(length) if length else None), "wb", 0
    with open(part, mode) as f:
      try:
        while True:
          chunk = resp.read(1 << 16)
          if not chunk:
            break
          f.write(chunk)
      except (OSError, ConnectionError, urllib.error.URLError):
        pass  # broken transfer: what arrived stays in .part for the next attempt
  return total, os.path.getsize(part)


def fetch(url: str, dest: str, *, sha256: str | None = None, retries: int = 3,
          timeout: float = 60.0) -> str:
  """Downloads `url` to `dest` (resuming a `.part`), verifying length and checksum."""
  if os.path.isfile(dest):
    if sha256 and _sha256(dest) != sha256:
      raise DownloadError(f"{dest}: cached file fails its SHA-256 check; delete it to re-download")
    return dest
  os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
  part = dest + ".part"
  total, have = None, 0
  for _ in range(max(1, retries)):
    total, have = _fetch_once(url, part, timeout)
    if total is None or have >= total:
      break
  if total is not None and have != total:
    raise DownloadError(f"{url}: transfer incomplete after {retries} attempts ({have} of {total} "
                        f"bytes; kept in {part} to resume)")
  if sha256 and _sha256(part) != sha256:
    os.remove(part)
    raise DownloadError(f"{url}: SHA-256 mismatch (expected {sha256}); partial data removed")
  os.replace(part, dest)
  return dest


def download(task: str, split: str, setting: str = "user", *, cache: str,
             base: str = DEFAULT_BASE, checksums: dict[str, str] | None = None,
             retries: int = 3) -> str:
  """Fetches one split of one task into the cache; returns its folder (reused when present)."""
  t = canonical_task(task)
  folder = os.path.join(cache, setting, t, split)
  manifest_path = os.path.join(cache, "checksums.json")
  manifest = {}
  if os.path.isfile(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
  for name, url in file_urls(t, split, setting, base).items():
    key = f"{setting}/{t}/{split}/{name}"
    expected = (checksums or {}).get(key) or manifest.get(key)
    dest = fetch(url, os.path.join(folder, name), sha256=expected, retries=retries)
    manifest[key] = expected or _sha256(dest)
  tmp = manifest_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  os.replace(tmp, manifest_path)
  return folder


def task_folder(task: str, setting: str, out: str, *, cache: str, base: str = DEFAULT_BASE,
                splits=SPLITS, retries: int = 3) -> str:
  """The folder the trainer takes (`--config.data.folder`): every split's files of one task and
  setting side by side (train_questions.json, train_outputs.json, dev_..., test_questions.json).

  Splits are fetched into the cache first; `out` is then assembled in a temporary folder and
  renamed, so it is complete or absent. An existing `out` holding the same files is reused; one
  that differs is never overwritten.
  """
  from tapper_jax.fileio import atomic_folder
  sources = {}
  for split in splits:
    folder = download(task, split, setting, cache=cache, base=base, retries=retries)
    for name in file_urls(task, split, setting, base):
      sources[name] = os.path.join(folder, name)
  if os.path.isdir(out):
    same = all(os.path.isfile(os.path.join(out, n)) and _sha256(os.path.join(out, n)) == _sha256(p)
               for n, p in sources.items())
    if not same:
      raise FileExistsError(f"{out}: exists and differs from {task} ({setting}); refusing to "
                            "overwrite it (choose another --out)")
    return out
  with atomic_folder(out) as tmp:
    import shutil
    for name, path in sources.items():  # copies: editing the folder never touches the cache
      shutil.copyfile(path, os.path.join(tmp, name))
  return out


def main(argv) -> None:
  """python -m tapper_jax.data.download --task=LaMP_2 --setting=time --out=DIR"""
  del argv
  from absl import flags
  f = flags.FLAGS
  folder = task_folder(f.task, f.setting, f.out, cache=f.cache, base=f.base,
                       splits=tuple(f.splits))
  print(f"{folder}: " + ", ".join(sorted(os.listdir(folder))))
  config = canonical_task(f.task).lower().replace("_", "").replace("2m", "2")  # lamp2n, lamp2, ...
  print(f"train with: python -m tapper_jax.train --config=configs/{config}.py:{f.setting} "
        f"--workdir=WORKDIR --config.data.folder={folder}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("task", None, "LaMP task: LaMP_1, LaMP_2 (movies), LaMP_2N, LaMP_3 ... LaMP_7.")
  flags.DEFINE_enum("setting", "time", list(SETTINGS), "Official setting: time- or user-based.")
  flags.DEFINE_string("out", None, "The task folder to write (the trainer's data.folder).")
  flags.DEFINE_string("cache", os.path.join(os.path.expanduser("~"), ".cache", "tapper_jax",
                                            "lamp"), "Download cache (resumable, checksummed).")
  flags.DEFINE_string("base", DEFAULT_BASE, "Base URL of the LaMP files.")
  flags.DEFINE_list("splits", list(SPLITS), "Splits to fetch.")
  flags.mark_flags_as_required(["task", "out"])
  app.run(main)

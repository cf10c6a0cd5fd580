"""File helpers shared by every layer (no JAX): atomic folder writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time


@contextlib.contextmanager
def atomic_folder(final: str):
  """Yields a temp folder beside `final`, renamed to it only on success; never overwrites."""
  parent = os.path.dirname(os.path.abspath(final)) or "."
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(final):
    raise FileExistsError(f"{final}: already exists; refusing to overwrite")
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(final) + "-", dir=parent)
  try:
    yield tmp
    if os.path.exists(final):
      raise FileExistsError(f"{final}: already exists; refusing to overwrite")
    os.rename(tmp, final)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str, obj) -> None:
  """Writes JSON to a temp file beside `path`, then renames it: readers never see half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
  os.replace(tmp, path)


def keep_previous(stem: str, exts=(".md", ".json", ".png")) -> None:
  """Renames an earlier run's `stem + ext` files with their modification time (never
  overwritten), so the new ones can take the plain names."""
  for ext in exts:
    if os.path.exists(stem + ext):
      stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(stem + ext)))
      os.replace(stem + ext, f"{stem}.{stamp}{ext}")


def slug(name: str) -> str:
  """A row or method name as a file-name part: lower case, runs of other characters as '_'."""
  return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def write_report(stem: str, out: dict, lines: list[str]) -> None:
  """A benchmark's STEM.json (`out`) and STEM.md (`lines`, also printed); earlier ones kept
  (`keep_previous`)."""
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  keep_previous(stem)
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))

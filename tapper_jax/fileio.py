"""File helpers shared by every layer (no JAX): atomic folder writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


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

"""Shared test setup. Sharding tests run in subprocesses with their own XLA_FLAGS."""

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# grain workers and absl-using code expect parsed flags.
try:
  from absl import flags
  flags.FLAGS.mark_as_parsed()
except Exception:  # absl missing: nothing to mark
  pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("TAPPER_JAX_SHARED_DATA",
                             os.path.join(os.path.dirname(REPO), "shared", "data"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long test (real model); run by .ci/run when it fits")


@pytest.fixture(scope="session")
def shared_data():
  raw = os.path.join(SHARED_DATA, "raw")
  if not os.path.isdir(raw):
    pytest.skip(f"real data not present at {raw}")
  return raw


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
  """A per-session model cache so tests never touch the user's ~/.cache."""
  d = os.environ.get("TAPPER_JAX_TEST_CACHE") or str(tmp_path_factory.mktemp("model_cache"))
  os.environ["TAPPER_JAX_CACHE"] = d
  return d

"""One comparison for trained parameters that two equal computations reach in another order."""

import numpy as np


def assert_trained_close(a, b, rtol: float, atol: float) -> None:
  """a and b as a whole: the norm of a - b within rtol of b's, and under 0.1% of entries outside
  rtol/atol elementwise. Adam scales each entry's step by that entry's own gradient history, so
  an entry whose gradient nearly cancels turns the reduction order's rounding into a visibly
  different step (a fresh CI machine: 1 of 2048-4096 table entries, 2e-5 to 2e-4 relative)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b) + atol, np.linalg.norm(a - b)
  assert np.mean(~np.isclose(a, b, rtol=rtol, atol=atol)) < 1e-3

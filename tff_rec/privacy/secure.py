"""Secure aggregation: the server sees only the sum of the cohort's updates.

TFF's secure sum (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017) through
`tff.learning.secure_aggregator`: each value is clipped to an adaptive bound
(initially [-50, 50]) and uniformly quantised to 32-bit integers, which the
`federated_secure_sum_bitwidth` intrinsic adds. TFF's local runtime simulates
the protocol (no cryptography runs); the computation's types are the same as
in a deployment.
"""

from __future__ import annotations

import tensorflow_federated as tff

from tff_rec import runtime  # noqa: F401  Managed TFF context (no leaked worker).

INITIAL_BOUND = 50.0  # tff.learning.secure_aggregator's initial per-coordinate bound.


def secure_mean() -> tff.aggregators.UnweightedAggregationFactory:
  """The unweighted mean of client updates, summed securely.

  Unweighted: a weighted mean would securely sum value x weight, which for
  example counts in the thousands exceeds the bound and is clipped. Zeroing and
  L2 clipping are off, so the result differs from the plain mean by
  quantisation alone: at most 2 * bound / (2**32 - 1) per coordinate and client
  before float32 rounding (tests/privacy/test_secure.py).
  """
  return tff.learning.secure_aggregator(zeroing=False, clipping=False, weighted=False)

"""Secure aggregation: the server sees only the sum of the cohort's updates.

TFF's secure sum (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017) through
`tff.learning.secure_aggregator`: each value is clipped to an adaptive bound
(twice the 0.95 quantile of clients' largest coordinate, estimated without
noise; initially [-100, 100]) and uniformly quantised to 32-bit integers, which the
`federated_secure_sum_bitwidth` intrinsic adds. TFF's local runtime simulates
the protocol (no cryptography runs); the computation's types are the same as
in a deployment.
"""

from __future__ import annotations

import tensorflow_federated as tff

from tff_rec import runtime  # noqa: F401  Managed TFF context (no leaked worker).

# tff.learning.secure_aggregator's bound: MULTIPLIER x the estimate of the TARGET_QUANTILE of clients' largest |value|.
INITIAL_ESTIMATE, TARGET_QUANTILE, LEARNING_RATE, MULTIPLIER = 50.0, 0.95, 1.0, 2.0
INITIAL_BOUND = MULTIPLIER * INITIAL_ESTIMATE


def secure_mean() -> tff.aggregators.UnweightedAggregationFactory:
  """The unweighted mean of client updates, summed securely.

  Unweighted: a weighted mean would securely sum value x weight, which for
  example counts in the thousands exceeds the bound and is clipped. Zeroing and
  L2 clipping are off, so the result differs from the plain mean by
  quantisation alone: at most 2 * bound / (2**32 - 1) per coordinate and client
  before float32 rounding (tests/privacy/test_secure.py).
  """
  return tff.learning.secure_aggregator(zeroing=False, clipping=False, weighted=False)

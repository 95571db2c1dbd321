"""Seeded, stateless noise for tensorflow-privacy's queries, in eager code and inside TFF's computations."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.privacy import dp, queries


def test_stateless_query_noise_has_the_query_stddev():
  query = dp.dp_query(dp.DPConfig('gaussian_fixed', noise_multiplier=2.0, clip_norm=0.5), 4)  # stddev 1.0, / 4.
  zeros = (tf.zeros([200, 100]), tf.zeros([300]))
  with queries.stateless_query_noise(7):
    noised, _, _ = query.get_noised_result(zeros, query.initial_global_state())
  with queries.stateless_query_noise(7):
    again, _, _ = query.get_noised_result(zeros, query.initial_global_state())
  values = np.concatenate([np.ravel(n) for n in noised])
  assert np.std(values) == pytest.approx(0.25, rel=0.03) and abs(np.mean(values)) < 0.01
  assert not np.array_equal(np.ravel(noised[0])[:300], np.ravel(noised[1]))  # Each tensor its own draw.
  for x, y in zip(noised, again):
    np.testing.assert_array_equal(x, y)

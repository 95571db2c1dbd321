"""Per-row clipping of users' sparse updates (`aggregation.clip_rows`), the robust mean, and the row bound composed
with the other shard aggregators."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.federated import aggregation


def test_each_row_of_each_table_leaf_is_clipped_and_scalars_are_not():
  table = tf.constant([[[3.0, 4.0], [0.3, 0.4]], [[0.0, 0.0], [6.0, 8.0]]])  # [U=2, K=2, d=2]: norms 5, .5, 0, 10.
  bias = tf.constant([[[2.0], [-0.5]], [[-3.0], [0.1]]])
  scalar = tf.constant([7.0, -9.0])
  out = aggregation.clip_rows([table, bias, scalar], 1.0)
  np.testing.assert_allclose(out[0].numpy(), [[[0.6, 0.8], [0.3, 0.4]], [[0.0, 0.0], [0.6, 0.8]]], atol=1e-6)
  np.testing.assert_allclose(out[1].numpy(), [[[1.0], [-0.5]], [[-1.0], [0.1]]], atol=1e-6)
  np.testing.assert_array_equal(out[2].numpy(), scalar.numpy())
  assert aggregation.clip_rows([table], 0.0)[0] is table  # 0: no bound.


def test_trimmed_mean_drops_k_at_each_end_of_each_coordinate_among_those_taking_part():
  values = tf.constant([[1.0, -4.0], [2.0, 0.0], [3.0, 4.0], [100.0, 1.0], [-50.0, 9.0]])  # The last takes no part.
  takes_part = tf.constant([True, True, True, True, False])
  # n = 4: a quarter drops k = 1 at each end: column 0 keeps [2, 3], column 1 keeps [0, 1].
  np.testing.assert_allclose(aggregation.trimmed_mean(values, takes_part, 0.25).numpy(), [2.5, 0.5])
  np.testing.assert_allclose(aggregation.trimmed_mean(values, takes_part, 0.0).numpy(), [26.5, 0.25])  # The mean.
  np.testing.assert_allclose(aggregation.trimmed_mean(values, takes_part, 0.5).numpy(), [2.5, 0.5])  # The median.
  everyone = tf.ones([5], tf.bool)
  np.testing.assert_allclose(aggregation.trimmed_mean(values, everyone, 0.5).numpy(), [2.0, 1.0])  # Odd: the middle.
  assert int(aggregation.trimmed_each_end(tf.constant(29), 0.1)) == 2  # floor(2.9), and 0.1 x 10 is 1, not 0.
  assert int(aggregation.trimmed_each_end(tf.constant(10), 0.1)) == 1
  assert not np.isfinite(aggregation.trimmed_mean(values, tf.zeros([5], tf.bool), 0.1).numpy()).any()


def _users(rows, deltas, bias, examples, keys):
  """A shard's `user_updates_type` value: a [4, 2] table and a [4, 1] bias (row 0 is padding), weights 1 (0 if
  empty)."""
  return collections.OrderedDict(
      rows=[np.array(rows, np.int64), np.array(rows, np.int64)], deltas=[np.array(deltas, np.float32),
                                                                          np.array(bias, np.float32)],
      weight=np.array([1.0 if e else 0.0 for e in examples], np.float32), examples=np.array(examples, np.float32),
      keys=np.array(keys, np.int64))


DENSE = [tf.TensorSpec([4, 2], tf.float32), tf.TensorSpec([4, 1], tf.float32)]
# Four users of a cohort of 6 (positions 0-4; position 5 not drawn), one of them empty: rows, deltas, bias, examples.
USERS = [([1, 2], [[1.0, 0.0], [2.0, 2.0]], [[1.0], [0.0]], 3, 0),
         ([1, 3], [[3.0, 1.0], [0.0, 4.0]], [[0.0], [1.0]], 2, 1),
         ([1, 0], [[900.0, -900.0], [0.0, 0.0]], [[90.0], [0.0]], 1, 3),  # An attacker pushing row 1.
         ([2, 0], [[5.0, 5.0], [0.0, 0.0]], [[0.0], [0.0]], 0, 4)]  # Empty: takes no part.


def _shards(cut):
  """`USERS` cut into shards: (start, end) pairs."""
  return [_users(*zip(*USERS[a:z])) for a, z in cut]


@pytest.mark.parametrize('cut', [[(0, 4)], [(0, 1), (1, 3), (3, 4)]], ids=['one_shard', 'three_shards'])
def test_robust_mean_collects_every_user_whatever_the_shards_and_trims_each_coordinate(cut):
  median = aggregation.RobustMeanFactory(DENSE, cohort=6, trim_fraction=0.5).create(aggregation.user_updates_type(DENSE))
  out = median.next(median.initialize(), _shards(cut))
  # Three users take part; per coordinate the middle of their three values (untouched rows are 0).
  table = np.zeros([4, 2], np.float32)
  table[1] = [3.0, 0.0]  # Row 1: [1, 3, 900] and [0, 1, -900].
  bias = np.array([[0.0], [1.0], [0.0], [0.0]], np.float32)  # Row 1: [1, 0, 90]; row 3: [0, 1, 0].
  np.testing.assert_allclose(out.result[0], table)
  np.testing.assert_allclose(out.result[1], bias)
  assert out.measurements['participants'] == 3 and out.measurements['trimmed_each_end'] == 1
  norms = [np.sqrt(1 + 8 + 1), np.sqrt(9 + 1 + 16 + 1), np.sqrt(2 * 900**2 + 90**2)]
  assert out.measurements['update_norm_median'] == pytest.approx(norms[1], rel=1e-6)
  assert out.measurements['update_norm_max'] == pytest.approx(norms[2], rel=1e-6)
  # Trimming nothing is the mean over the users taking part, as MeanFactory's with uniform weights.
  plain = aggregation.RobustMeanFactory(DENSE, cohort=6, trim_fraction=0.0).create(aggregation.user_updates_type(DENSE))
  mean = aggregation.MeanFactory(DENSE).create(aggregation.user_updates_type(DENSE))
  for got, expected in zip(plain.next(plain.initialize(), _shards(cut)).result,
                           mean.next(mean.initialize(), _shards(cut)).result):
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_robust_mean_clips_rows_first_and_refuses_a_user_beyond_the_cohort():
  clipped = aggregation.RobustMeanFactory(DENSE, cohort=6, trim_fraction=0.0, row_bound=1.0)
  process = clipped.create(aggregation.user_updates_type(DENSE))
  out = process.next(process.initialize(), _shards([(0, 4)]))
  bounded = aggregation.MeanFactory(DENSE, row_bound=1.0).create(aggregation.user_updates_type(DENSE))
  for got, expected in zip(out.result, bounded.next(bounded.initialize(), _shards([(0, 4)])).result):
    np.testing.assert_allclose(got, expected, rtol=1e-6)
  small = aggregation.RobustMeanFactory(DENSE, cohort=4, trim_fraction=0.1).create(aggregation.user_updates_type(DENSE))
  with pytest.raises(Exception, match='cohort position is beyond the cohort of 4'):
    small.next(small.initialize(), _shards([(0, 4)]))  # Position 4.
  with pytest.raises(ValueError, match='trim fraction in \\[0, 0.5\\]'):
    aggregation.RobustMeanFactory(DENSE, cohort=4, trim_fraction=0.6)
  with pytest.raises(ValueError, match="`over` one of every_user, touched; got 4, 0.1, 'raters'"):
    aggregation.RobustMeanFactory(DENSE, cohort=4, trim_fraction=0.1, over='raters')


@pytest.mark.parametrize('factory, bound', [
    (lambda bound: aggregation.SecureMeanFactory(DENSE, users_per_shard=4, row_bound=bound), 1.0),
    (lambda bound: aggregation.CompressedMeanFactory(DENSE, seed=0, threshold=10**6, row_bound=bound), 1.0),
    # Rows of 0.01 keep every user's norm under distributed DP's own L2 clip (0.1 at first).
    (lambda bound: aggregation.DistributedDPFactory(0.0, 3, DENSE, seed=0, row_bound=bound), 0.01),
], ids=['secure', 'compression', 'distributed_dp'])
def test_the_row_bound_composes_with_secure_aggregation_compression_and_distributed_dp(factory, bound):
  """Each clips every user's rows before its sum: the result is the row-bounded mean (up to its quantisation)."""
  users = _shards([(0, 3)])  # Three users, all taking part: every factory's mean is over them.
  bounded = aggregation.MeanFactory(DENSE, row_bound=bound).create(aggregation.user_updates_type(DENSE))
  expected = bounded.next(bounded.initialize(), users).result
  atol = bound / 50
  for row_bound, close in ((bound, True), (0.0, False)):
    process = factory(row_bound).create(aggregation.user_updates_type(DENSE))
    got = process.next(process.initialize(), users).result
    assert all(np.allclose(g, e, atol=atol) for g, e in zip(got, expected)) == close, (row_bound, got, expected)


def test_trimmed_mean_takes_participants_per_row():
  values = tf.constant([[[1.0], [5.0]], [[2.0], [7.0]], [[30.0], [9.0]]])  # [C=3, R=2, 1]
  takes_part = tf.constant([[True, False], [True, True], [True, True]])  # Row 0: all three; row 1: the last two.
  np.testing.assert_allclose(aggregation.trimmed_mean(values, takes_part, 0.5).numpy(), [[2.0], [8.0]])


@pytest.mark.parametrize('cut', [[(0, 4)], [(0, 1), (1, 3), (3, 4)]], ids=['one_shard', 'three_shards'])
def test_robust_mean_over_touched_rows_trims_among_each_rows_raters_and_scales_by_their_share(cut):
  updates = aggregation.user_updates_type(DENSE)
  median = aggregation.RobustMeanFactory(DENSE, cohort=6, trim_fraction=0.5, over='touched').create(updates)
  out = median.next(median.initialize(), _shards(cut))
  # Row 1: all three users touch it, the middle of [1, 3, 900] and [0, 1, -900]; row 2: user 0 alone ([2, 2]) and
  # row 3: user 1 alone ([0, 4]), a third of the users; row 0 (the attacker's padding): 0.
  np.testing.assert_allclose(out.result[0], [[0.0, 0.0], [3.0, 0.0], [2 / 3, 2 / 3], [0.0, 4 / 3]], rtol=1e-6)
  np.testing.assert_allclose(out.result[1], [[0.0], [1.0], [0.0], [1 / 3]], rtol=1e-6)  # Row 1's [1, 0, 90].
  plain = aggregation.RobustMeanFactory(DENSE, cohort=6, trim_fraction=0.0, over='touched').create(updates)
  mean = aggregation.MeanFactory(DENSE).create(updates)
  for got, expected in zip(plain.next(plain.initialize(), _shards(cut)).result,
                           mean.next(mean.initialize(), _shards(cut)).result):
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # Trimming nothing: the mean.

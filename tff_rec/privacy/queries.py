"""tensorflow-privacy queries run inside our own graphs: seeded, stateless noise, and the current clip.

Written by hand (a shim over tensorflow-privacy 0.9.0, pinned): its Gaussian
queries draw noise from an unseeded initializer, and a DP run must draw the
same noise for the same (seed, round), also when resumed and inside TFF's
runtime.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import gaussian_query  # 0.9.0 (pinned): see stateless_query_noise.

def clip_norm(dp_state) -> tf.Tensor:
  """The current value clip of a query state: NormalizedQuery(GaussianSumQuery | QuantileAdaptiveClipSumQuery |
  RestartQuery(TreeResidualSumQuery))."""
  numerator = dp_state.numerator_state
  if hasattr(numerator, 'inner_query_state'):
    return numerator.inner_query_state.clip_value
  return numerator.sum_state.l2_norm_clip if hasattr(numerator, 'sum_state') else numerator.l2_norm_clip


class _StatelessNormalInitializer:
  """`tf.random_normal_initializer` drawing `tf.random.stateless_normal` under (seed, draw number)."""

  def __init__(self, seed: int | tf.Tensor, counter: list[int], mean: float = 0.0, stddev: float = 1.0, **unused):
    del unused
    self.seed, self.counter, self.mean, self.stddev = seed, counter, mean, stddev

  def __call__(self, shape, dtype=tf.float32, **unused):
    del unused
    self.counter[0] += 1
    seed = tf.stack([tf.cast(self.seed, tf.int64), tf.constant(self.counter[0], tf.int64)])  # The seed may be a tensor.
    return tf.random.stateless_normal(shape, seed=seed, mean=self.mean, stddev=self.stddev, dtype=dtype)


class _TfWithStatelessNormal:
  """The `tf` module as tensorflow-privacy's gaussian_query sees it, with a seeded, stateless normal initializer."""

  def __init__(self, seed: int | tf.Tensor):
    self._seed, self._counter = seed, [0]

  def random_normal_initializer(self, **kwargs):
    return _StatelessNormalInitializer(self._seed, self._counter, **kwargs)

  def __getattr__(self, name):
    return getattr(tf, name)


@contextlib.contextmanager
def stateless_query_noise(seed: int | tf.Tensor):
  """Makes tensorflow-privacy's Gaussian queries draw their noise statelessly under `seed` (in this block).

  Written by hand: `GaussianSumQuery.get_noised_result` (tensorflow-privacy
  0.9.0, the fixed and the adaptive-clip sum, and the adaptive clip's
  quantile estimate) draws from an unseeded `tf.random_normal_initializer`.
  Seeding it with `tf.random.set_seed` made the noise reproducible but clears
  TF's kernel caches, so every tf.function of the next round was instantiated
  again (most of DP's round-time overhead). Here the query module sees a `tf`
  whose normal initializer is `tf.random.stateless_normal` under (seed, draw
  number): the same noise for the same seed, in any process, at no cost.
  """
  module = gaussian_query
  original = module.tf
  module.tf = _TfWithStatelessNormal(seed)
  try:
    yield
  finally:
    module.tf = original


def noise_seed(seed: int | tf.Tensor, round_num: int | tf.Tensor) -> tf.Tensor:
  """The one stateless seed of a run's round: seed * 2**32 + round (rounds < 2**32), int64, in any graph."""
  return tf.cast(seed, tf.int64) * (2 ** 32) + tf.cast(round_num, tf.int64)

"""Per-row clipping of users' sparse updates (`aggregation.clip_rows`)."""

import numpy as np
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

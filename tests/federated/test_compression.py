"""--compression: TFF's encoded (8-bit quantized) mean, what a client uploads, and how close the mean stays."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_rec import runtime  # noqa: F401  (managed TFF context)
from tff_rec.federated import compression


def test_upload_bytes_quantize_only_large_tensors():
  small = compression.upload_bytes([tf.TensorSpec([10], tf.float32)])
  assert small == 10 * 4 + 4  # Sent as float32, plus the client's weight.
  large = compression.upload_bytes([tf.TensorSpec([200, 150], tf.float32)])  # 30,000 values > 20,000.
  assert 30_000 <= large < 1.2 * 30_000  # One byte a value, bit-packed, plus the quantization range.
  assert large < 200 * 150 * 4 / 3


def test_compressed_mean_is_the_weighted_mean_within_one_quantization_step():
  rng = np.random.default_rng(0)
  values = [rng.normal(size=(30_000,)).astype(np.float32) for _ in range(3)]
  weights = np.array([1.0, 2.0, 5.0], np.float32)
  process = compression.aggregator().create(tff.TensorType(np.float32, [30_000]), tff.TensorType(np.float32))
  result = process.next(process.initialize(), values, list(weights)).result
  expected = np.tensordot(weights, np.stack(values), axes=1) / weights.sum()
  # Each client's weighted value is quantized to 8 bits over its own range: at most one step each, in the sum.
  steps = [np.ptp(w * v) / (2**8 - 1) for w, v in zip(weights, values)]
  error = np.abs(result - expected)
  assert error.max() <= sum(steps) / weights.sum() + 1e-5 and error.max() > 0

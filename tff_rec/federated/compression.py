"""Compressed client updates: TFF's encoded mean (uniform quantization, Suresh et al., ICML 2017).

`aggregator()` is what `tff.learning.compression_aggregator(zeroing=False,
clipping=False)` builds: an example-weighted mean whose sum is a
`tff.aggregators.EncodedSumFactory`, each client's (weighted) update tensor
with more than `THRESHOLD` elements quantized to `BITS` bits before it leaves
the client (smaller tensors, like the item biases, go as float32). Built here
from TFF's public pieces with our own encoder function so that
`upload_bytes` measures the very encoders the aggregator runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te  # As TFF's encoded.py.

BITS, THRESHOLD = 8, 20_000  # tff.learning.compression_aggregator's settings.


def _encoder(spec: tf.TensorSpec):
  if int(np.prod(spec.shape)) > THRESHOLD:
    return te.encoders.as_gather_encoder(te.encoders.uniform_quantization(BITS), spec)
  return te.encoders.as_gather_encoder(te.encoders.identity(), spec)


class CompressedMean(tff.aggregators.MeanFactory):
  """TFF's weighted mean over the encoded sum (a type of its own, so engines can tell what clients upload)."""

  def __init__(self):
    super().__init__(tff.aggregators.EncodedSumFactory(_encoder))


def aggregator() -> CompressedMean:
  """The example-weighted mean of quantized client updates."""
  return CompressedMean()


def upload_bytes(specs: Sequence[tf.TensorSpec]) -> int:
  """Bytes one client sends for an update of `specs`: what TFF's encoders produce, plus the float32 weight.

  Each encoder encodes a zero tensor of the spec; the encoded tensors (the
  bit-packed levels and the quantization range) and the encoder's state-update
  tensors are what leaves the client. (TFF's simulation also echoes the
  server's decode parameters back through the clients, an artefact of its
  aggregation API that a deployment does not send; not counted.)
  """
  total = 4  # The client's weight.
  for spec in specs:
    encoder = _encoder(spec)
    encode_params, _, _ = encoder.get_params(encoder.initial_state())
    encoded, state_update = encoder.encode(tf.zeros(spec.shape, spec.dtype), encode_params)
    total += sum(int(np.prod(t.shape)) * t.dtype.size for t in tf.nest.flatten((encoded, state_update)))
  return total

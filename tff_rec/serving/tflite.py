"""On-device inference: the exported recommender as a TFLite model, and the runner a phone would use.

The device already holds its user's history, and the item side is public to every client (it is broadcast each
round), so the natural deployment of Federated Reconstruction (Singhal et al., NeurIPS 2021) is the device:
the TFLite model carries the item side and the same `recommend` and `score` signatures as the SavedModel
(`tff_rec.serving.export`), reconstructing the user from its own history with the same ops (the closed-form SGD
loop for MF, the exact solve for ALS), with no server involved.

Only TFLite's builtin ops are allowed (no Flex delegate), so the model runs with the `tflite-runtime` package
(2.14, the TF 2.14 line) as well as `tf.lite.Interpreter`. Quantisation (`QUANTIZATIONS`) uses the converter's
post-training options (https://www.tensorflow.org/lite/performance/post_training_quantization).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tff_rec import atomic

MODEL_FILE = 'model.tflite'
NONE, FLOAT16, DYNAMIC_INT8 = 'none', 'float16', 'dynamic_int8'
QUANTIZATIONS = (NONE, FLOAT16, DYNAMIC_INT8)
SIGNATURES = ('recommend', 'score')
EXPLANATION_IDS = 'explanation_item_ids'  # An output of recommend exported with --explain.


def convert(saved_model_dir: str, quantize: str = NONE) -> bytes:
  """The SavedModel's `recommend` and `score` signatures as one TFLite flatbuffer.

  Args:
    saved_model_dir: An export of `tff_rec.serving.export`.
    quantize: `none` (float32), `float16` (weights stored as float16) or `dynamic_int8` (weights int8,
      activations quantised on the fly). Full-integer int8 is not offered: its calibration feeds the model's
      inputs through TFLite's calibrator, which takes no string tensors, and the inputs are item ids.

  Raises:
    ValueError: On an unknown `quantize`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the runner side needs no TensorFlow)
  if quantize not in QUANTIZATIONS:
    raise ValueError(f'--quantize must be one of {", ".join(QUANTIZATIONS)}, got {quantize!r}')
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=list(SIGNATURES))
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # tflite-runtime has no Flex ops.
  if quantize != NONE:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == FLOAT16:
    converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


def write(model: bytes, export_dir: str) -> str:
  """Writes `export_dir/model.tflite` atomically; returns its path."""
  os.makedirs(export_dir, exist_ok=True)
  path = os.path.join(export_dir, MODEL_FILE)
  atomic.write_bytes(path, model)
  return path


def interpreter(path: str, *, runtime: str = 'auto') -> Any:
  """A TFLite interpreter for `path`: `tflite_runtime`'s (what a device ships), TensorFlow's, or `auto` (the
  former when installed)."""
  if runtime not in ('auto', 'tflite_runtime', 'tensorflow'):
    raise ValueError(f'runtime must be auto, tflite_runtime or tensorflow, got {runtime!r}')
  if runtime in ('auto', 'tflite_runtime'):
    try:
      from tflite_runtime.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
      return Interpreter(model_path=path)
    except ImportError:
      if runtime == 'tflite_runtime':
        raise
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.lite.Interpreter(model_path=path)


class OnDeviceRecommender:
  """Runs the TFLite model's signatures for one history at a time, as the app on a phone would."""

  def __init__(self, path: str, *, runtime: str = 'auto'):
    self.path = path
    self._interpreter = interpreter(path, runtime=runtime)
    missing = set(SIGNATURES) - set(self._interpreter.get_signature_list())
    if missing:
      raise ValueError(f'{path} has no {", ".join(sorted(missing))} signature (signatures: '
                       f'{", ".join(self._interpreter.get_signature_list())})')
    self._recommend = self._interpreter.get_signature_runner('recommend')
    self._score = self._interpreter.get_signature_runner('score')

  @staticmethod
  def _history(item_ids: Sequence[str], ratings: Sequence[float]) -> dict[str, np.ndarray]:
    if len(item_ids) != len(ratings):
      raise ValueError(f'{len(item_ids)} history items but {len(ratings)} ratings')
    return {'history_item_ids': np.array([[str(i).encode() for i in item_ids]], dtype=object).reshape(1, -1),
            'history_ratings': np.asarray(ratings, np.float32).reshape(1, -1)}

  @property
  def explains(self) -> bool:
    """Whether the model was exported with --explain (its `recommend` returns explanations)."""
    return EXPLANATION_IDS in self._interpreter.get_signature_list()['recommend']['outputs']

  def recommend(self, item_ids: Sequence[str], ratings: Sequence[float]) -> list[tuple[str, float]]:
    """The top K (item id, score) for a user with this history; slots with no item are left out."""
    out = self._recommend(**self._history(item_ids, ratings))
    return [(i.decode(), float(s)) for i, s in zip(out['item_ids'][0], out['scores'][0]) if i]

  def recommend_explained(self, item_ids: Sequence[str],
                          ratings: Sequence[float]) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """As `recommend`, each item with its explaining (history item id, share of the score) pairs."""
    if not self.explains:
      raise ValueError(f'{self.path} was exported without --explain: its recommend returns no explanations')
    out = self._recommend(**self._history(item_ids, ratings))
    return [(i.decode(), float(s), [(h.decode(), float(c)) for h, c in zip(ids, shares) if h])
            for i, s, ids, shares in zip(out['item_ids'][0], out['scores'][0], out[EXPLANATION_IDS][0],
                                         out['explanation_contributions'][0]) if i]

  def score(self, item_ids: Sequence[str], ratings: Sequence[float], candidates: Sequence[str]) -> np.ndarray:
    """Scores of `candidates` [C] for a user with this history."""
    out = self._score(**self._history(item_ids, ratings),
                      candidate_item_ids=np.array([[str(c).encode() for c in candidates]], dtype=object))
    return out['scores'][0]

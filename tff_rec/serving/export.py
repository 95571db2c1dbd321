"""Export: a trained recommender as a SavedModel that reconstructs the user from the request's history.

The server never holds per-user state (Federated Reconstruction, Singhal et
al., NeurIPS 2021): the model carries the global item side, and each request
carries a user's history, from which the signatures reconstruct the user
exactly as evaluation does (`tff_rec.models.reconstruction`, same support
examples, same SGD), so served scores are the evaluated ones.

Signatures (a contract; names and dtypes fixed):

- `serving_default` = `recommend`: `history_item_ids` (string [batch, H], "" =
  padding) and `history_ratings` (float32 [batch, H]) -> `item_ids` (string
  [batch, K]) and `scores` (float32 [batch, K]): the top K of the catalogue,
  history items excluded.
- `score`: the same history inputs and `candidate_item_ids` (string [batch, C])
  -> `scores` (float32 [batch, C]); predicted ratings for the rating objective.

Exported with `explain=E > 0`, `recommend` also returns, for each recommended
item, the E history items that contributed most to its score:
`explanation_item_ids` (string [batch, K, E], "" past the history) and
`explanation_contributions` (float32 [batch, K, E]). A contribution is the
history item's exact share of the score's user term: the reconstructed user is
a sum of per-example terms (the SGD steps' -lr g_e q_e, shrunk by the L2
decay; ALS: b's terms through a^-1), so <user, v_i> splits over the support
examples, and a history item's share is the sum over its examples. The
shares not shown are the sampled negatives' (implicit feedback) and the other
history items'; the item's bias (and b_u + mu) is not split.

Unknown item ids are dropped from a history and score `UNKNOWN_SCORE` as
candidates. A training run leaves what export needs in its output directory
(`MODEL_STATE`, written by `tff_rec.experiment.run`).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf

from tff_rec import atomic
from tff_rec.models import als, mf, reconstruction, two_tower

MODEL_STATE = 'model_state.npz'
METADATA = 'metadata.json'
UNKNOWN_SCORE = float(np.finfo(np.float32).min)  # Unknown candidates, and slots left when K > unseen items.
SIGNATURES = ('serving_default', 'recommend', 'score')
SAVED_MODEL, TFLITE = 'saved_model', 'tflite'
# The signatures' inputs (the contract above).
HISTORY_SPECS = (tf.TensorSpec([None, None], tf.string, name='history_item_ids'),
                 tf.TensorSpec([None, None], tf.float32, name='history_ratings'))
SCORE_SPECS = HISTORY_SPECS + (tf.TensorSpec([None, None], tf.string, name='candidate_item_ids'),)
FORMATS = (SAVED_MODEL, TFLITE)
MF, TWO_TOWER, SEQUENCE = 'mf', 'two_tower', 'sequence_two_tower'  # As `tff_rec.tasks` names the models.


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """How the served model reconstructs a user: the training run's evaluation settings."""

  objective: str
  l2: float
  batch_size: int
  num_negatives: int
  learning_rate: float
  epochs: int
  seed: int
  recent_items: int = 0
  recent_repeats: int = 0
  model: str = MF  # MF, or TWO_TOWER (served with its candidate tower computed over the catalogue).
  als_alpha: float = 0.0  # > 0: the user is solved exactly by implicit ALS (--algorithm=fed_als), not SGD.
  als_regularization: float = 0.0
  sequence: dict | None = None  # SEQUENCE: its `sequence.SequenceConfig` (`tff_rec.serving.sequence_export`).

  def validate(self) -> None:
    if self.objective not in mf.OBJECTIVES:
      raise ValueError(f'objective must be one of {mf.OBJECTIVES}, got {self.objective!r}')
    if self.model not in (MF, TWO_TOWER, SEQUENCE) or (self.model != MF and self.objective != mf.IMPLICIT):
      raise ValueError(f'model must be {MF}, {TWO_TOWER} or {SEQUENCE} (implicit objective), got {self.model!r}')
    if (self.model == SEQUENCE) != (self.sequence is not None):
      raise ValueError(f'a {SEQUENCE} model state has its shape (sequence), other models none: {self}')
    if self.batch_size < 1 or self.num_negatives < 0:
      raise ValueError(f'invalid reconstruction settings {self}')
    reconstruction.EvalSettings(self.learning_rate, self.epochs, self.recent_items, self.recent_repeats,
                                self.als_alpha, self.als_regularization).validate()
    if self.als_alpha > 0 and (self.model != MF or self.objective != mf.IMPLICIT):
      raise ValueError(f'ALS reconstruction serves implicit MF models, got {self.model} {self.objective}')


def save_model_state(path: str, config: ServingConfig, vocabulary: list[str], weights: list[np.ndarray]) -> None:
  """Writes what export needs (settings, item vocabulary, global weights) to one .npz, atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, config=json.dumps(dataclasses.asdict(config)), vocabulary=np.array(vocabulary, dtype=object),
           **{f'weight_{i}': np.asarray(w) for i, w in enumerate(weights)})
  atomic.write_bytes(path, buffer.getvalue())


def load_model_state(path: str) -> tuple[ServingConfig, list[str], list[np.ndarray]]:
  with np.load(path, allow_pickle=True) as data:
    config = ServingConfig(**json.loads(str(data['config'])))
    vocabulary = [str(v) for v in data['vocabulary']]
    weights = [data[f'weight_{i}'] for i in range(sum(k.startswith('weight_') for k in data.files))]
  return config, vocabulary, weights


class Recommender(tf.Module):
  """The exported module: item side, vocabulary and the reconstruction settings."""

  def __init__(self, config: ServingConfig, vocabulary: list[str], weights: list[np.ndarray], top_k: int,
               explain: int = 0, jit_compile: bool = False):
    super().__init__(name='recommender')
    config.validate()
    rating = config.objective == mf.RATING
    if config.model == TWO_TOWER:
      if len(weights) != 5:
        raise ValueError('a two-tower model state has 5 arrays (id embedding, genre projection, year embedding, '
                         f'item dense features (genres[, title vector]), item year buckets), got {len(weights)}')
      table = two_tower.candidate_table(weights[:3], two_tower.ItemFeatures(weights[3], weights[4]))
      # Scores are <query, candidate>: the candidate tower over the catalogue in the place of MF's item
      # embedding, and no biases.
      weights = [table, np.zeros([table.shape[0], 1], np.float32)]
    expected = 3 if rating else 2
    if len(weights) != expected:
      raise ValueError(f'an MF {config.objective} model has {expected} global weights (item embedding, item bias'
                       f'{", global mean" if rating else ""}), got {len(weights)}')
    if weights[0].shape[0] != len(vocabulary) + 1:
      raise ValueError(f'item embedding has {weights[0].shape[0]} rows for {len(vocabulary)} items (+1 unknown)')
    if top_k < 1:
      raise ValueError(f'top_k must be >= 1, got {top_k}')
    if explain < 0:
      raise ValueError(f'explain must be >= 0 (history items per recommendation; 0: none), got {explain}')
    if jit_compile and config.als_alpha > 0:
      raise ValueError('jit_compile compiles the SGD reconstruction; an ALS model solves its users exactly instead')
    self.config = config
    self.explain = explain
    self.jit_compile = jit_compile
    self.top_k = min(top_k, len(vocabulary))
    self.num_items = len(vocabulary)
    # Item index i is blank_and_vocabulary[i]: '' for 0 (unknown, or no item left in a top K).
    self.blank_and_vocabulary = tf.constant(['', *vocabulary], tf.string)
    self.lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(self.blank_and_vocabulary[1:],
                                            tf.range(1, self.num_items + 1, dtype=tf.int64)),
        default_value=0)
    self.item_embedding = tf.Variable(weights[0], trainable=False, name='item_embedding')
    self.item_bias = tf.Variable(weights[1], trainable=False, name='item_bias')
    self.global_mean = tf.Variable(weights[2], trainable=False, name='global_mean') if rating else None
    # The narrowest integer that holds the item indices (int16 up to 32,767 items): this constant is the largest
    # in a small catalogue's model, larger than the int8 item table of the TFLite model (docs/serving.md).
    self.negatives = tf.constant(reconstruction.negative_table(config.seed, self.num_items, config.num_negatives),
                                 tf.int16 if self.num_items < 2 ** 15 else tf.int32)

  def user(self, history_item_ids: tf.Tensor, history_ratings: tf.Tensor,
           shares: bool = False) -> tuple[list[tf.Tensor], tf.Tensor, tuple]:
    """The reconstructed local parameters [p_u [batch, 1, d]] (+ b_u; two-tower: the query), the history, and
    (support items, labels, mask, shares) for `_explain`: with `shares`, the examples' shares of the user (ALS:
    its system's matrix a), else None."""
    tf.debugging.assert_equal(tf.shape(history_item_ids), tf.shape(history_ratings),
                              message='history_item_ids and history_ratings must have the same shape')
    tf.debugging.assert_all_finite(history_ratings, 'history_ratings must be finite')
    history = self.lookup.lookup(history_item_ids)
    c = self.config
    items, labels, counts = reconstruction.support_examples(history, history_ratings, objective=c.objective,
                                                            negatives=self.negatives, recent_items=c.recent_items,
                                                            recent_repeats=c.recent_repeats)
    items, labels, mask = reconstruction.batched(items, labels, counts, c.batch_size)
    if c.als_alpha > 0:  # Exactly as fed_als evaluates: the ALS solve on the rated support examples.
      user = als.reconstruct(self.item_embedding, items, labels, mask,
                             als.AlsConfig(c.als_alpha, c.als_regularization), system=shares)
      user, coefficients = ([user[0]], user[1]) if shares else ([user], None)
    elif self.jit_compile:
      user, coefficients = self._compiled_sgd(items, labels, mask, shares)
    else:
      user, coefficients = self._sgd(items, labels, mask, shares)
    return user, history, (items, labels, mask, coefficients)

  def _sgd(self, items: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor, shares: bool) -> tuple[list, list | None]:
    """The SGD reconstruction (MF, or the two-tower query): (user parameters, each example's shares or None)."""
    c = self.config
    if c.model == TWO_TOWER:
      user = reconstruction.reconstruct_query(self.item_embedding, items, labels, mask,
                                              learning_rate=c.learning_rate, epochs=c.epochs, coefficients=shares)
      return ([user[0]], [user[1]]) if shares else ([user], None)
    user = reconstruction.reconstruct(self.item_embedding, self.item_bias, self.global_mean, items, labels, mask,
                                      objective=c.objective, l2=c.l2, learning_rate=c.learning_rate,
                                      epochs=c.epochs, coefficients=shares)
    return user if shares else (user, None)

  def _compiled_sgd(self, items: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor,
                    shares: bool) -> tuple[list, list | None]:
    """`_sgd` compiled by XLA, on inputs padded to the next power of two of users and of batches.

    XLA compiles once per input shape; padding (users to a power of two, batches by `_batch_bucket`) bounds the
    compilations (a few per server) without changing the result: a padded user has no examples, and a padded batch
    is empty, so its step changes nothing (g = 0 and no L2 shrinkage), and every epoch still takes the real
    batches in order before the next.
    Arithmetic may differ from TF's kernels in the last bits (fused operations).
    """
    users, batches = tf.shape(items)[0], tf.shape(items)[1]
    padded = [next_power_of_two(users), _batch_bucket(batches)]
    pad = [[0, padded[0] - users], [0, padded[1] - batches], [0, 0]]
    compiled = tf.function(self._sgd, jit_compile=True, autograph=False)
    user, coefficients = compiled(tf.pad(items, pad), tf.pad(labels, pad), tf.pad(mask, pad), shares)
    user = [u[:users] for u in user]
    if coefficients is not None:
      coefficients = [c[:users, :batches] for c in coefficients]
    return user, coefficients

  def _explain(self, history: tf.Tensor, support: tuple, recommended: tf.Tensor) -> dict[str, tf.Tensor]:
    """The `explain` history items with the largest shares of each recommended item's score (module docstring).

    Args:
      history: [batch, H] item indices (0: padding or unknown).
      support: `user(..., shares=True)`'s support examples and shares.
      recommended: [batch, K] item indices (0: none).
    """
    items, labels, mask, coefficients = support
    users, k, d = tf.shape(items)[0], tf.shape(recommended)[1], self.item_embedding.shape[1]
    items, labels, mask = (tf.reshape(x, [users, -1]) for x in (items, labels, mask))  # [batch, L]
    v = tf.gather(self.item_embedding, recommended)  # [batch, K, d]
    y = tf.gather(self.item_embedding, items)  # [batch, L, d]
    if self.config.als_alpha > 0:  # <a^-1 v, y_n> (1 + alpha) w_n, a^-1 v by one solve per recommended item.
      a = tf.reshape(tf.broadcast_to(tf.expand_dims(coefficients, 1), tf.stack([users, k, d, d])), [-1, d, d])
      solved = tf.reshape(als.spd_solve(a, tf.reshape(v, [-1, d])), tf.stack([users, k, d]))
      weights = (1.0 + self.config.als_alpha) * als.positive_weights(labels, mask)
      shares = tf.matmul(solved, y, transpose_b=True) * tf.expand_dims(weights, 1)  # [batch, K, L]
    else:
      shares = tf.matmul(v, y, transpose_b=True) * tf.expand_dims(tf.reshape(coefficients[0], [users, -1]), 1)
      if len(coefficients) == 2:  # b_u's shares (ratings).
        shares += tf.expand_dims(tf.reshape(coefficients[1], [users, -1]), 1)
    # Each history position's examples (its positive, repeats), summed; a repeated history item counted once.
    match = tf.cast(tf.logical_and(tf.equal(tf.expand_dims(history, 2), tf.expand_dims(items, 1)),
                                   tf.expand_dims(history > 0, 2)), shares.dtype)  # [batch, H, L]
    per_history = tf.matmul(shares, match, transpose_b=True)  # [batch, K, H]
    positions = tf.range(tf.shape(history)[1])
    earlier = tf.expand_dims(positions, 1) < tf.expand_dims(positions, 0)  # [H, H]: h' < h
    repeated = tf.reduce_any(tf.logical_and(tf.equal(tf.expand_dims(history, 2), tf.expand_dims(history, 1)),
                                            tf.expand_dims(earlier, 0)), axis=1)  # [batch, H]
    shown = tf.logical_and(history > 0, tf.logical_not(repeated))
    per_history = tf.where(tf.expand_dims(shown, 1), per_history, UNKNOWN_SCORE)
    # E columns of nothing appended, so that top E is defined for histories shorter than E.
    per_history = tf.concat([per_history, tf.fill(tf.stack([users, k, self.explain]), UNKNOWN_SCORE)], 2)
    history = tf.concat([history, tf.zeros(tf.stack([users, self.explain]), history.dtype)], 1)
    top, position = tf.math.top_k(per_history, self.explain)  # [batch, K, E]
    found = tf.logical_and(top > UNKNOWN_SCORE, tf.expand_dims(recommended > 0, 2))
    index = tf.gather(history, tf.reshape(position, [users, -1]), batch_dims=1)  # [batch, K * E]
    index = tf.where(found, tf.reshape(index, tf.shape(position)), 0)
    return {'explanation_item_ids': tf.gather(self.blank_and_vocabulary, index),
            'explanation_contributions': tf.where(found, top, 0.0)}

  def _offset(self, user: list[tf.Tensor]) -> tf.Tensor:
    """b_u + mu [batch, 1] for ratings, else 0."""
    return user[1][:, 0] + self.global_mean if self.global_mean is not None else tf.zeros([tf.shape(user[0])[0], 1])

  @tf.function(input_signature=HISTORY_SPECS)
  def recommend(self, history_item_ids, history_ratings):
    user, history, support = self.user(history_item_ids, history_ratings, shares=self.explain > 0)
    # Scores over the whole table, then the unknown item's column dropped (slicing the table instead would put a
    # second copy of it in the TFLite model, where constants are folded).
    scores = (tf.matmul(user[0][:, 0], self.item_embedding, transpose_b=True)
              + tf.expand_dims(self.item_bias[:, 0], 0))[:, 1:] + self._offset(user)  # [batch, items]
    outputs, recommended = top_unseen(scores, history, self.top_k, self.blank_and_vocabulary)
    if self.explain:
      outputs |= self._explain(history, support, tf.cast(recommended, history.dtype))
    return outputs

  @tf.function(input_signature=SCORE_SPECS)
  def score(self, history_item_ids, history_ratings, candidate_item_ids):
    tf.debugging.assert_equal(tf.shape(candidate_item_ids)[0], tf.shape(history_item_ids)[0],
                              message='candidate_item_ids and history_item_ids must have the same batch size')
    user, _, _ = self.user(history_item_ids, history_ratings)
    candidates = self.lookup.lookup(candidate_item_ids)
    q = tf.gather(self.item_embedding, candidates)  # [batch, C, d]
    scores = (tf.reduce_sum(user[0] * q, -1) + tf.gather(self.item_bias, candidates)[..., 0] + self._offset(user))
    return {'scores': tf.where(candidates > 0, scores, UNKNOWN_SCORE)}

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string), tf.TensorSpec([None, None], tf.float32)])
  def user_embedding(self, history_item_ids, history_ratings):
    """The reconstructed user embedding [batch, d] (not a serving signature; for tests and tools)."""
    return self.user(history_item_ids, history_ratings)[0][0][:, 0]


def top_unseen(scores: tf.Tensor, history: tf.Tensor, top_k: int, blank_and_vocabulary: tf.Tensor
               ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
  """`recommend`'s outputs from every item's scores [batch, items] (index i + 1 = item i): the top K, the
  history's items [batch, H] (0: none) excluded; and the recommended item indices [batch, K] (0: none left)."""
  top, recommended = top_unseen_indices(scores, history, top_k)
  return {'item_ids': tf.gather(blank_and_vocabulary, recommended), 'scores': top}, recommended


def top_unseen_indices(scores: tf.Tensor, history: tf.Tensor, top_k: int) -> tuple[tf.Tensor, tf.Tensor]:
  """`top_unseen`'s numbers: the top K scores [batch, K] and item indices (0: none left). Static shapes only, so
  XLA compiles it: every history slot scatters (a padding slot adds 0 to column 0)."""
  rows = tf.broadcast_to(tf.range(tf.shape(history, out_type=tf.int64)[0])[:, None], tf.shape(history, tf.int64))
  slots = tf.stack([rows, tf.maximum(history - 1, 0)], axis=-1)
  seen = tf.scatter_nd(slots, tf.cast(history > 0, tf.int32), tf.shape(scores, out_type=tf.int64))
  scores = tf.where(seen > 0, UNKNOWN_SCORE, scores)
  top, indices = tf.math.top_k(scores, top_k)
  # '' where no item is left by gathering index 0 (a select on strings is not a TFLite op).
  return top, tf.where(top > UNKNOWN_SCORE, indices + 1, 0)


def next_power_of_two(n: tf.Tensor) -> tf.Tensor:
  """The smallest power of two >= n (n >= 1), int32 (rounded, then doubled if short: exact, as a power's log2 in
  float may land just above its integer)."""
  n = tf.cast(n, tf.int32)
  power = tf.cast(2.0 ** tf.round(tf.math.log(tf.cast(n, tf.float32)) / np.log(2.0)), tf.int32)
  return tf.where(power < n, 2 * power, power)


def _batch_bucket(batches: tf.Tensor) -> tf.Tensor:
  """Batches padded to a multiple of 8 up to 64, then to a power of two: at most 7 (or half) of the steps empty,
  and 8 + log2 shapes to compile over the histories a server sees."""
  return tf.where(batches <= 64, (batches + 7) // 8 * 8, next_power_of_two(batches))


def save(module: Recommender, export_dir: str, metadata: dict[str, Any]) -> None:
  """Saves `module` and `metadata.json` to `export_dir`, replacing what was there only once both are written."""
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.export-', dir=parent)
  try:
    signatures = {'serving_default': module.recommend, 'recommend': module.recommend, 'score': module.score}
    tf.saved_model.save(module, staging, signatures=signatures)
    atomic.write_json(os.path.join(staging, METADATA), metadata)
    old = None
    if os.path.exists(export_dir):
      if not os.path.isdir(export_dir):
        raise ValueError(f'--export_dir {export_dir} exists and is not a directory')
      old = tempfile.mkdtemp(prefix='.replaced-', dir=parent)
      os.rmdir(old)
      os.replace(export_dir, old)
    os.replace(staging, export_dir)
    if old:
      shutil.rmtree(old)
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging)


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def export_run(run_dir: str, export_dir: str, top_k: int = 10, *, fmt: str = SAVED_MODEL,
               quantize: str = 'none', explain: int = 0, jit_compile: bool = False) -> dict[str, Any]:
  """Exports the trained model of the run in `run_dir`; returns the metadata written beside it.

  `fmt`: `saved_model`, or `tflite` (`export_dir/model.tflite`, `tff_rec.serving.tflite`, quantised by
  `quantize`). `explain` > 0: `recommend` also returns that many explaining history items per recommendation.
  `jit_compile`: the SavedModel's SGD reconstruction (`Recommender._compiled_sgd`), or the sequence two-tower's
  query tower, compiled by XLA (TF Serving then needs --xla_cpu_compilation_enabled=true).
  """
  if fmt not in FORMATS:
    raise ValueError(f'--format must be one of {", ".join(FORMATS)}, got {fmt!r}')
  if jit_compile and fmt != SAVED_MODEL:
    raise ValueError('--jit_compile compiles the SavedModel\'s reconstruction with XLA, which TFLite does not run; '
                     'drop it with --format=tflite')
  state_path = os.path.join(run_dir, MODEL_STATE)
  for name in (MODEL_STATE, 'final_metrics.json', 'hparams.json'):
    if not os.path.exists(os.path.join(run_dir, name)):
      raise FileNotFoundError(
          f'{os.path.join(run_dir, name)} does not exist: --run_dir must be a finished training run '
          '(<root_output_dir>/<experiment_name>)')
  config, vocabulary, weights = load_model_state(state_path)
  if config.model == SEQUENCE:
    module = _sequence_module(config, vocabulary, weights, top_k, fmt=fmt, explain=explain, jit_compile=jit_compile)
  else:
    module = Recommender(config, vocabulary, weights, top_k, explain, jit_compile)
  final = _read_json(os.path.join(run_dir, 'final_metrics.json'))
  ledger_path = os.path.join(run_dir, 'privacy_ledger.json')
  ledger = _read_json(ledger_path) if os.path.exists(ledger_path) else None
  metadata = {
      'experiment_flags': _read_json(os.path.join(run_dir, 'hparams.json')),
      'rounds': final.get('rounds'),
      'final_metrics': final,
      'privacy': ledger if ledger is not None else {'mechanism': 'none', 'epsilon': None, 'delta': None},
      'item_vocabulary_size': len(vocabulary),
      'top_k': module.top_k,
      'explain': explain,
      'jit_compile': jit_compile,
      'reconstruction': dataclasses.asdict(config),
      'signatures': list(SIGNATURES),
      'source_run_dir': os.path.abspath(run_dir),
      'export_time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  if fmt == SAVED_MODEL:
    save(module, export_dir, metadata)
    return metadata
  from tff_rec.serving import tflite  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as staging:
    tf.saved_model.save(module, staging, signatures={'recommend': module.recommend, 'score': module.score})
    model = tflite.convert(staging, quantize)
  tflite.write(model, export_dir)
  metadata |= {'format': TFLITE, 'quantize': quantize, 'signatures': list(tflite.SIGNATURES),
               'model_bytes': len(model)}
  atomic.write_json(os.path.join(export_dir, METADATA), metadata)
  return metadata


def _sequence_module(config: ServingConfig, vocabulary: list[str], weights: list[np.ndarray], top_k: int, *,
                     fmt: str, explain: int, jit_compile: bool):
  """The sequence two-tower's module (`sequence_export.SequenceRecommender`): its state is the model's weights,
  then the item features' dense table and year buckets."""
  from tff_rec.models import sequence  # pylint: disable=g-import-not-at-top
  from tff_rec.serving import sequence_export  # pylint: disable=g-import-not-at-top
  if fmt != SAVED_MODEL or explain:
    raise ValueError('the sequence two-tower exports as a SavedModel without --explain (its request is one '
                     'forward pass, nothing is reconstructed); drop --format=tflite and --explain')
  config.validate()
  shape = sequence.SequenceConfig(**config.sequence)
  features = two_tower.ItemFeatures(weights[-2], weights[-1].astype(np.int64))
  return sequence_export.SequenceRecommender(shape, vocabulary, list(weights[:-2]), features, top_k, jit_compile)


def describe(export_dir: str, metadata: dict[str, Any]) -> str:
  """A summary of an export for the binaries to print."""
  explained = f', {metadata["explain"]} explaining history items each' if metadata.get('explain') else ''
  if metadata.get('format') == TFLITE:
    return (f'Exported TFLite model to {export_dir}/model.tflite ({metadata["model_bytes"] / 1e6:.2f} MB, '
            f'quantize={metadata["quantize"]}; signatures {", ".join(metadata["signatures"])}; '
            f'{metadata["item_vocabulary_size"]} items, top {metadata["top_k"]}{explained}; metadata.json beside it)')
  return (f'Exported SavedModel to {export_dir}/ (signatures {", ".join(SIGNATURES)}; '
          f'{metadata["item_vocabulary_size"]} items, top {metadata["top_k"]}{explained}; metadata.json beside it)')

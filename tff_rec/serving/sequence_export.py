"""The sequence two-tower as a SavedModel: the request's history is the query tower's input.

Same contract as `export.Recommender` (`serving_default` = `recommend`, `score`;
names and dtypes fixed): `history_item_ids` (string [batch, H], "" = padding)
**in time order, oldest first**, and `history_ratings` (float32 [batch, H];
read for its shape only: the model is of implicit feedback). Unknown ids and
padding are dropped, the remaining items kept in order, and a history longer
than the model's `max_history` is truncated to its most recent items, as
training and evaluation window it. The user's query is the query tower's state
at the last item (the Keras towers of `tff_rec.models.sequence_towers`), scored against the candidate
tower over the catalogue (computed once, at export); history items are not
recommended. An empty history gives the query of no items (the final layer
norm's bias): one fixed ranking of the catalogue, the item side's own.
Nothing is reconstructed per request (no per-user parameters), so a request is
one forward pass; with `jit_compile` the query tower is compiled by XLA (TF
Serving then needs --xla_cpu_compilation_enabled=true, as for MF).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_rec.models import sequence, sequence_towers, two_tower
from tff_rec.serving import export

UNKNOWN_SCORE = export.UNKNOWN_SCORE


class SequenceRecommender(tf.Module):
  """The exported sequence two-tower: the query tower's weights, the candidate table, the vocabulary."""

  def __init__(self, config: sequence.SequenceConfig, vocabulary: list[str], weights: list[np.ndarray],
               features: two_tower.ItemFeatures, top_k: int, jit_compile: bool = False):
    super().__init__(name='sequence_recommender')
    config.validate()
    if len(weights) != len(sequence.weight_names(config)):
      raise ValueError(f'a sequence two-tower of {config.num_blocks} blocks has {len(sequence.weight_names(config))} '
                       f'weights, got {len(weights)}')
    if weights[sequence.ITEM].shape[0] != len(vocabulary) + 1:
      raise ValueError(f'item embedding has {weights[sequence.ITEM].shape[0]} rows for {len(vocabulary)} items')
    if top_k < 1:
      raise ValueError(f'top_k must be >= 1, got {top_k}')
    self.config = config
    self.jit_compile = jit_compile
    self.top_k = min(top_k, len(vocabulary))
    self.blank_and_vocabulary = tf.constant(['', *vocabulary], tf.string)
    self.lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(self.blank_and_vocabulary[1:],
                                            tf.range(1, len(vocabulary) + 1, dtype=tf.int64)), default_value=0)
    towers = sequence_towers.build_towers(config, features, weights)
    table = towers.candidate(tf.range(len(vocabulary) + 1, dtype=tf.int64)[None])[0]
    self.table = tf.Variable(table, trainable=False, name='candidate_table')
    self.query_tower = towers.query  # The functional Keras query tower (it embeds the history's items itself).

  def query(self, history_item_ids: tf.Tensor, history_ratings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(each request's query [batch, d], its known history item indices [batch, H] (0: dropped))."""
    history, window = self._read(history_item_ids, history_ratings)
    return (self._compiled_queries(window) if self.jit_compile else self._queries(window)), history

  def _read(self, history_item_ids: tf.Tensor, history_ratings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The request's item indices [batch, H] (0: unknown or padding) and its window [batch, L] (`_window`)."""
    tf.debugging.assert_equal(tf.shape(history_item_ids), tf.shape(history_ratings),
                              message='history_item_ids and history_ratings must have the same shape')
    history = self.lookup.lookup(history_item_ids)
    return history, self._window(history)

  def _queries(self, window: tf.Tensor) -> tf.Tensor:
    """The query tower's state at the last position of each window [batch, L] -> [batch, d]."""
    return self.query_tower([window, tf.zeros([tf.shape(window)[0], 2], tf.int64)], training=False)[:, -1, :]

  def _compiled_queries(self, window: tf.Tensor) -> tf.Tensor:
    """`_queries` compiled by XLA (2-3x faster on CPU: it fuses the blocks' many small ops), the batch padded to
    the next power of two so that a server compiles a few shapes (the window's length is fixed); a padded row is
    an empty history, dropped from the result. Arithmetic may differ from TF's kernels in the last bits."""
    users = tf.shape(window)[0]
    padded = export.next_power_of_two(users)
    compiled = tf.function(self._queries, jit_compile=True, autograph=False)
    return compiled(tf.pad(window, [[0, padded - users], [0, 0]]))[:users]

  def _window(self, history: tf.Tensor) -> tf.Tensor:
    """Each row's known items in order, right-aligned, cut or left-padded (0) to `max_history` [batch, L]."""
    length = tf.shape(history)[1]
    positions = tf.range(length, dtype=tf.int64)[None]
    key = tf.where(history > 0, positions + tf.cast(length, tf.int64), positions)  # Unknowns first, order kept.
    ordered = tf.gather(history, tf.argsort(key, axis=1, stable=True), batch_dims=1)
    size = self.config.max_history
    padded = tf.pad(ordered, [[0, 0], [tf.maximum(size - length, 0), 0]])
    return padded[:, -size:]

  @tf.function(input_signature=export.HISTORY_SPECS)
  def recommend(self, history_item_ids, history_ratings):
    history, window = self._read(history_item_ids, history_ratings)
    top, recommended = (self._compiled_top(window, history) if self.jit_compile else self._top(window, history))
    return {'item_ids': tf.gather(self.blank_and_vocabulary, recommended), 'scores': top}

  def _top(self, window: tf.Tensor, history: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The top K unseen items' scores and indices of each window's query (`export.top_unseen_indices`)."""
    scores = tf.matmul(self._queries(window), self.table, transpose_b=True)[:, 1:]  # [batch, items]
    return export.top_unseen_indices(scores, history, self.top_k)

  def _compiled_top(self, window: tf.Tensor, history: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`_top` compiled by XLA, the batch and the history's width padded to powers of two (a few shapes a server)."""
    users, width = tf.shape(window)[0], tf.shape(history)[1]
    padded_users = export.next_power_of_two(users)
    padded_width = export.next_power_of_two(tf.maximum(width, 1))
    compiled = tf.function(self._top, jit_compile=True, autograph=False)
    top, recommended = compiled(tf.pad(window, [[0, padded_users - users], [0, 0]]),
                                tf.pad(history, [[0, padded_users - users], [0, padded_width - width]]))
    return top[:users], recommended[:users]

  @tf.function(input_signature=export.SCORE_SPECS)
  def score(self, history_item_ids, history_ratings, candidate_item_ids):
    tf.debugging.assert_equal(tf.shape(candidate_item_ids)[0], tf.shape(history_item_ids)[0],
                              message='candidate_item_ids and history_item_ids must have the same batch size')
    query, _ = self.query(history_item_ids, history_ratings)
    candidates = self.lookup.lookup(candidate_item_ids)
    scores = tf.reduce_sum(query[:, None, :] * tf.gather(self.table, candidates), -1)
    return {'scores': tf.where(candidates > 0, scores, UNKNOWN_SCORE)}

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string), tf.TensorSpec([None, None], tf.float32)])
  def user_embedding(self, history_item_ids, history_ratings):
    """The query [batch, d] (not a serving signature; for tests and tools)."""
    return self.query(history_item_ids, history_ratings)[0]

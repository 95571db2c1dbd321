"""A sequence-aware two-tower model: a causal self-attention query tower over the user's history (plain TF).

The query tower is SASRec (Kang & McAuley, "Self-Attentive Sequential
Recommendation", ICDM 2018): the user's last `max_history` items in time
order, each embedded by the candidate tower and added to a learned position
embedding, go through `num_blocks` pre-norm Transformer blocks (causal
single-head self-attention, a ReLU feed-forward layer, residuals, dropout) and
a final layer norm; the state at position t is the query that predicts item
t + 1. The candidate tower is the item-id embedding plus a projection of the
item's dense public features (genres[, title vector]) plus a year-bucket
embedding, as `two_tower.build_two_tower`'s; the query tower reads the same
item embeddings, so every weight is shared and global. There are no per-user
parameters: the user is the history its device holds, so the model trains with
FedAvg (McMahan et al., AISTATS 2017) and serves any history.

Loss: next-item softmax at every position over the user's own items and
sampled negatives, the user's other items removed as accidental hits: what
`tfrs.tasks.Retrieval(remove_accidental_hits=True)` computes on one user's
positions when its positives share one candidate id (tested equal).

The maths take weights with a leading axis of 1 (shared) or U (a copy per
user, so that one gradient gives every user's own gradient and a shard's users
train side by side, as `tff_rec.federated.shard_math` does for MF), and every
tensor [U, ...]. Written by hand: TFRS and Keras have no batched-over-users
form of a Transformer. The functional Keras towers of
`tff_rec.models.sequence_towers` call these functions on their own weights
(leading axis 1); the centralized engine and the SavedModel use them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import zlib

import numpy as np
import tensorflow as tf

from tff_rec.models import two_tower

_NEG = -1e9  # Logit of a removed candidate.


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
  """The model's shape. `max_history`: positions (the history's most recent items; longer ones are truncated)."""

  num_items: int
  dense_features: int  # Width of `two_tower.ItemFeatures.dense`.
  embedding_dim: int = 32
  max_history: int = 50
  num_blocks: int = 2
  dropout: float = 0.2
  init_stddev: float = 0.05
  seed: int = 0

  def validate(self) -> None:
    if min(self.num_items, self.embedding_dim, self.max_history, self.num_blocks) < 1:
      raise ValueError(f'num_items, embedding_dim, max_history and num_blocks must be >= 1, got {self}')
    if not 0.0 <= self.dropout < 1.0 or self.init_stddev <= 0:
      raise ValueError(f'dropout must be in [0, 1) and init_stddev > 0, got {self.dropout}, {self.init_stddev}')


ITEM, DENSE, YEAR, POSITION = 0, 1, 2, 3  # Indices of the candidate tower's weights and the positions'.
BLOCK_WEIGHTS = ('ln1_scale', 'ln1_bias', 'query', 'key', 'value', 'ln2_scale', 'ln2_bias', 'ff1', 'ff1_bias',
                 'ff2', 'ff2_bias')


def weight_names(config: SequenceConfig) -> list[str]:
  """The global weights' names, in the order every function here takes them."""
  names = ['item_embedding', 'dense_projection', 'year_embedding', 'position_embedding']
  for b in range(config.num_blocks):
    names += [f'block{b}/{n}' for n in BLOCK_WEIGHTS]
  return names + ['final_ln_scale', 'final_ln_bias']


def initial_weights(config: SequenceConfig) -> list[np.ndarray]:
  """Seeded initial weights: embeddings N(0, init_stddev), matrices Glorot-normal, layer norms (1, 0), biases 0."""
  config.validate()
  rng = np.random.default_rng(config.seed)
  d = config.embedding_dim

  def normal(shape, stddev):
    return rng.normal(0.0, stddev, shape).astype(np.float32)

  glorot = math.sqrt(2.0 / (d + d))
  out = [normal([config.num_items + 1, d], config.init_stddev),
         normal([config.dense_features, d], math.sqrt(2.0 / (config.dense_features + d))),
         normal([two_tower.NUM_YEAR_BUCKETS, d], config.init_stddev),
         normal([config.max_history, d], config.init_stddev)]
  out[ITEM][0] = 0.0  # The unknown item.
  for _ in range(config.num_blocks):
    out += [np.ones(d, np.float32), np.zeros(d, np.float32), normal([d, d], glorot), normal([d, d], glorot),
            normal([d, d], glorot), np.ones(d, np.float32), np.zeros(d, np.float32), normal([d, d], glorot),
            np.zeros(d, np.float32), normal([d, d], glorot), np.zeros(d, np.float32)]
  return out + [np.ones(d, np.float32), np.zeros(d, np.float32)]


def candidate_embeddings(weights, id_rows: tf.Tensor, dense: tf.Tensor, years: tf.Tensor) -> tf.Tensor:
  """The candidate tower: id rows [U, K, d] + dense [U, K, F] x projection [1|U, F, d] + year embedding of
  `years` [U, K] (table [1|U, Y, d]) -> [U, K, d]."""
  projection, year_table = weights[DENSE], weights[YEAR]
  year_table = tf.broadcast_to(year_table, tf.concat([tf.shape(id_rows)[:1], tf.shape(year_table)[1:]], 0))
  return id_rows + tf.matmul(dense, projection) + tf.gather(year_table, years, batch_dims=1)


def _layer_norm(x, scale, bias, epsilon=1e-6):
  mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
  return (x - mean) * tf.math.rsqrt(variance + epsilon) * scale + bias


def _dropout(x, rate: float, seeds, layer: int):
  """Inverted dropout of x [U, ...], user u's mask drawn from its own stateless seed `seeds[u]` [2] (and `layer`),
  whatever else is in the batch (None or rate 0: none)."""
  if seeds is None or rate == 0.0:
    return x
  layer_seeds = tf.cast(seeds, tf.int64) + tf.constant([0, 1], tf.int64) * (layer + 1)
  keep = tf.map_fn(lambda s: tf.random.stateless_uniform(tf.shape(x)[1:], s), layer_seeds,
                   fn_output_signature=tf.float32) >= rate
  return tf.where(keep, x / (1.0 - rate), 0.0)


def query_states(weights, config: SequenceConfig, inputs: tf.Tensor, present: tf.Tensor, seeds=None) -> tf.Tensor:
  """The query tower: item embeddings of the history `inputs` [U, L, d] (left-padded; `present` [U, L] 1 where an
  item is) -> states [U, L, d]; state t attends to positions <= t that hold items. `seeds` [U, 2] (training):
  dropout on the input and after attention and the feed-forward layer, each user's from its own seed."""
  length = tf.shape(inputs)[1]
  present = tf.cast(present, inputs.dtype)[..., None]
  x = (inputs + weights[POSITION][:, -length:, :]) * present
  x = _dropout(x, config.dropout, seeds, 0)
  causal = tf.linalg.band_part(tf.ones([length, length]), -1, 0)  # [query t, key s]: s <= t.
  allowed = causal[None] * tf.transpose(present, [0, 2, 1])  # Keys that hold items.
  scale = 1.0 / math.sqrt(config.embedding_dim)
  for b in range(config.num_blocks):
    ln1s, ln1b, wq, wk, wv, ln2s, ln2b, w1, b1, w2, b2 = _block(weights, b)
    h = _layer_norm(x, ln1s, ln1b)
    logits = tf.matmul(tf.matmul(h, wq), tf.matmul(h, wk), transpose_b=True) * scale
    logits = tf.where(allowed > 0, logits, _NEG)
    attention = tf.nn.softmax(logits, axis=-1) * allowed  # A padded query row (no keys) attends to nothing.
    attended = tf.matmul(attention, tf.matmul(h, wv))
    x = x + _dropout(attended, config.dropout, seeds, 1 + 2 * b)
    h = _layer_norm(x, ln2s, ln2b)
    ff = tf.matmul(tf.nn.relu(tf.matmul(h, w1) + b1), w2) + b2
    x = (x + _dropout(ff, config.dropout, seeds, 2 + 2 * b)) * present
  return _layer_norm(x, weights[-2][:, None, :], weights[-1][:, None, :])


def _block(weights, b: int):
  """Block b's weights (leading axis 1|U), vectors as [1|U, 1, d] so they broadcast over positions."""
  start = POSITION + 1 + b * len(BLOCK_WEIGHTS)
  return [w[:, None, :] if w.shape.rank == 2 else w for w in weights[start:start + len(BLOCK_WEIGHTS)]]


def expand(weights) -> list[tf.Tensor]:
  """Shared weights with the leading axis of 1 that the functions here take (the vectors [1, d])."""
  return [tf.convert_to_tensor(w)[None] for w in weights]


def next_item_losses(states: tf.Tensor, candidates: tf.Tensor, targets: tf.Tensor, target_mask: tf.Tensor,
                     positive: tf.Tensor, candidate_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Each user's summed next-item softmax loss and its number of predictions ([U], [U]).

  `states` [U, L, d] (the query at each position), `candidates` [U, K, d] (the
  user's rows: its items and its sampled negatives), `targets` [U, L] (the
  local row of the item after each position), `target_mask` [U, L],
  `positive` [U, K] (rows that are the user's items: removed from every
  position's softmax but its own target's), `candidate_mask` [U, K] (rows
  that exist).
  """
  logits = tf.matmul(states, candidates, transpose_b=True)  # [U, L, K]
  rows = tf.shape(candidates)[1]
  is_target = tf.equal(tf.range(rows)[None, None, :], tf.cast(targets, tf.int32)[..., None])  # [U, L, K]
  removed = tf.logical_or(tf.logical_and(tf.cast(positive, tf.bool)[:, None, :], tf.logical_not(is_target)),
                          tf.logical_not(tf.cast(candidate_mask, tf.bool))[:, None, :])
  logits = tf.where(removed, _NEG, logits)
  losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
  mask = tf.cast(target_mask, losses.dtype)
  return tf.reduce_sum(losses * mask, axis=1), tf.reduce_sum(mask, axis=1)


def training_example(history: np.ndarray, max_history: int, num_negatives: int, num_items: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A user's training example: its window, the last `max_history` + 1 items of `history` (time order), label 1,
  then `num_negatives` items drawn uniformly from the catalogue with `seed`, label 0 (none if the window holds
  fewer than two items: nothing to predict)."""
  window = np.asarray(history, np.int64)[-(max_history + 1):]
  drawn = np.random.default_rng(seed).integers(1, num_items + 1, num_negatives) if len(window) > 1 else []
  items = np.concatenate([window, np.asarray(drawn, np.int64)])
  return items, np.concatenate([np.ones(len(window), np.float32), np.zeros(len(drawn), np.float32)])


def pack_sequences(examples: list[tuple[np.ndarray, np.ndarray]], max_history: int) -> collections.OrderedDict:
  """Users' training examples (`training_example`) -> one shard's padded tensors.

  A user's window (label 1) gives inputs (all but its last item) and targets
  (all but its first: each position predicts the next item), left-padded to
  `max_history`. Its rows are the window's items and its negatives (label 0;
  a negative that is one of its items is a positive, removed as such), sorted
  and padded with row 0. Returns OrderedDict(rows [U, K] int64, history
  [U, L] int32 (local rows), present [U, L], targets [U, L] int32,
  target_mask [U, L], positive [U, K], candidate_mask [U, K], seeds [U, 2]
  int64: the user's dropout seed, a checksum of its example, so of the seed
  that drew its negatives).
  """
  users, length = len(examples), max_history
  windows = [np.asarray(items, np.int64)[np.asarray(labels) > 0.5][-(length + 1):] for items, labels in examples]
  chosen = [np.unique(np.asarray(items, np.int64)) if len(items) else np.zeros(1, np.int64) for items, _ in examples]
  width = max(len(r) for r in chosen) if chosen else 1
  rows = np.zeros((users, width), np.int64)
  candidate_mask = np.zeros((users, width), np.float32)
  positive = np.zeros((users, width), np.float32)
  history = np.zeros((users, length), np.int32)
  present = np.zeros((users, length), np.float32)
  targets = np.zeros((users, length), np.int32)
  target_mask = np.zeros((users, length), np.float32)
  seeds = np.zeros((users, 2), np.int64)
  for u, (h, r, (items, _)) in enumerate(zip(windows, chosen, examples)):
    rows[u, :len(r)] = r
    seeds[u] = [zlib.crc32(np.asarray(items, np.int64).tobytes()), 0]
    n = len(h) - 1  # Predictions.
    if n <= 0:
      continue
    candidate_mask[u, :len(r)] = 1.0
    local = np.searchsorted(r, h).astype(np.int32)
    positive[u, local] = 1.0
    history[u, length - n:], present[u, length - n:] = local[:-1], 1.0
    targets[u, length - n:], target_mask[u, length - n:] = local[1:], 1.0
  return collections.OrderedDict(rows=rows, history=history, present=present, targets=targets,
                                 target_mask=target_mask, positive=positive, candidate_mask=candidate_mask,
                                 seeds=seeds)


def pad_histories(histories: list[np.ndarray], max_history: int) -> tuple[np.ndarray, np.ndarray]:
  """Each history's last `max_history` items, left-padded with item 0: ([U, L] int64, present [U, L])."""
  out = np.zeros((len(histories), max_history), np.int64)
  present = np.zeros((len(histories), max_history), np.float32)
  for u, h in enumerate(histories):
    h = np.asarray(h, np.int64)[-max_history:] if max_history else np.zeros(0, np.int64)
    if len(h):
      out[u, -len(h):], present[u, -len(h):] = h, 1.0
  return out, present

"""Reconstructing users' local MF parameters from their histories, many users at once (plain TF).

Federated Reconstruction (Singhal et al., NeurIPS 2021) never stores a user's
embedding: whoever scores for a user first solves for it from the user's own
data with the global item side frozen. This module is that solve for MF
(`tff_rec.models.mf`), batched over users, and is the one implementation
used by the shard process's training and evaluation and by the exported
SavedModel (`tff_rec.serving.export`), so served scores are evaluated scores.

Reconstruction is plain SGD from zeros: for `epochs` passes over the user's
support examples in batches of `batch_size`, w <- w - lr * grad of the
batch-mean loss (`mf.RegularizedLoss`), exactly TFF's reconstruction stage
with `tff.learning.optimizers.build_sgdm(lr)`.

Support examples at evaluation and serving (`support_examples`) must be a
function of the history alone, since a served request carries nothing else:
for the implicit objective every history item is a positive followed by
`num_negatives` negatives read from a fixed pseudo-random table
(`negative_table`, drawn once from the run's seed) at row
(position + item index) mod rows. Training keeps its fresh per-round
negatives (`preprocessing.training_examples`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tff_rec.models import mf

NEGATIVE_TABLE_ROWS = 4096
_NEGATIVE_PURPOSE = 1  # Keeps the table's stream apart from training's (purpose 0 of `preprocessing.client_seed`).


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How evaluation (and the served model) reconstructs a user: SGD settings and the support's recency emphasis.

  With `als_alpha` > 0 (`--algorithm=fed_als`) the user is instead solved
  exactly by implicit ALS (`tff_rec.models.als.solve_users`) with that alpha
  and `als_regularization`; the SGD settings are then unused.
  """

  learning_rate: float
  epochs: int
  recent_items: int = 0
  recent_repeats: int = 0
  als_alpha: float = 0.0
  als_regularization: float = 0.0

  def validate(self) -> None:
    if self.learning_rate <= 0 or self.epochs < 1 or self.recent_items < 0 or self.recent_repeats < 0:
      raise ValueError(f'evaluation reconstruction needs learning_rate > 0, epochs >= 1 and recency >= 0, got {self}')
    if self.als_alpha < 0 or (self.als_alpha > 0) != (self.als_regularization > 0):
      raise ValueError(f'ALS reconstruction needs als_alpha and als_regularization both > 0 (or both 0), got {self}')


def negative_table(seed: int, num_items: int, num_negatives: int, rows: int = NEGATIVE_TABLE_ROWS) -> np.ndarray:
  """[rows, num_negatives] item indices drawn uniformly from 1..num_items, fixed by `seed`."""
  rng = np.random.default_rng([seed, _NEGATIVE_PURPOSE])
  return rng.integers(1, num_items + 1, size=(rows, num_negatives), dtype=np.int64)


def support_examples(history: tf.Tensor, ratings: tf.Tensor, *, objective: str, negatives: tf.Tensor,
                     recent_items: int = 0, recent_repeats: int = 0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Users' histories -> their support examples, in the order reconstruction takes them.

  Args:
    history: [users, H] item indices in the user's order (oldest first); 0
      (unknown item or padding) is dropped, and the remaining items close up.
    ratings: [users, H] the ratings (labels of the rating objective).
    objective: `mf.RATING` (example = (item, rating)) or `mf.IMPLICIT`
      (item k at position t -> (item, 1) then (n, 0) for each n in
      negatives[(t + item) mod rows]).
    negatives: `negative_table`, [rows, num_negatives] item indices (int16, int32 or int64).
    recent_items, recent_repeats: recency emphasis: the examples of the
      user's last `recent_items` items are appended `recent_repeats` more
      times, so the SGD steps that finish reconstruction are on the newest
      history (tastes drift: time-weighted collaborative filtering, Ding & Li,
      CIKM 2005). 0: every item once.

  Returns:
    items [users, L] int64, labels [users, L] float32 (padding: item 0,
    label 0) and the number of examples per user [users].
  """
  history = tf.cast(tf.convert_to_tensor(history, tf.int64), tf.int32)
  ratings = tf.convert_to_tensor(ratings, tf.float32)
  valid = history > 0
  position = tf.cumsum(tf.cast(valid, tf.int32), axis=1) - 1  # Each item's place among the user's items.
  count = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1, keepdims=True)
  if objective == mf.RATING:
    blocks, labels = tf.expand_dims(history, -1), tf.expand_dims(ratings, -1)  # [users, H, 1]: one per item.
  else:
    rows = tf.math.floormod(position + history, tf.shape(negatives)[0])
    drawn = tf.cast(tf.gather(negatives, rows), tf.int32)  # Gathered, then cast: the table may be int16.
    blocks = tf.concat([tf.expand_dims(history, -1), drawn], axis=-1)  # [users, H, 1 + N]
    labels = tf.concat([tf.ones_like(blocks[..., :1], tf.float32), tf.zeros_like(blocks[..., 1:], tf.float32)], -1)
  keep = [valid]
  if recent_items > 0 and recent_repeats > 0:
    recent = tf.logical_and(valid, position >= count - recent_items)
    keep += [recent] * recent_repeats
    blocks = tf.concat([blocks] * (1 + recent_repeats), axis=1)
    labels = tf.concat([labels] * (1 + recent_repeats), axis=1)
  keep = tf.concat(keep, axis=1)
  users = tf.shape(blocks)[0]
  keep = tf.reshape(tf.broadcast_to(tf.expand_dims(keep, -1), tf.shape(blocks)), [users, -1])
  blocks, labels = tf.reshape(blocks, [users, -1]), tf.reshape(labels, [users, -1])
  # Close up: the kept examples first, in order (a stable partition by top_k on a decreasing key). Dense ops
  # only, no ragged ones, so that the exported model converts to TFLite's builtin ops (tff_rec.serving.tflite).
  slots = tf.shape(blocks)[1]
  index = tf.range(slots)
  key = tf.cast(tf.where(keep, 2 * slots - index, slots - index), tf.float32)
  order = tf.math.top_k(key, slots).indices
  counts = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
  length = tf.reduce_max(tf.concat([counts, [0]], 0))
  order = order[:, :length]
  inside = tf.expand_dims(tf.range(length), 0) < tf.expand_dims(counts, 1)
  items = tf.where(inside, tf.gather(blocks, order, batch_dims=1), 0)
  labels = tf.where(inside, tf.gather(labels, order, batch_dims=1), 0.0)
  return tf.cast(items, tf.int64), labels, tf.cast(counts, tf.int64)


def batched(items: tf.Tensor, labels: tf.Tensor, counts: tf.Tensor,
            batch_size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """[users, L] examples -> [users, batches, batch_size] items, labels and mask (`Dataset.batch` cuts)."""
  length = tf.shape(items)[1]  # int32 arithmetic: TFLite's builtin FloorDiv has no int64 kernel.
  batches = tf.maximum(1, (length + batch_size - 1) // batch_size)
  pad = [[0, 0], [0, batches * batch_size - length]]
  mask = tf.sequence_mask(tf.cast(counts, tf.int32), batches * batch_size, tf.float32)
  shape = tf.stack([tf.shape(items)[0], batches, batch_size])
  return (tf.reshape(tf.pad(items, pad), shape), tf.reshape(tf.pad(labels, pad), shape),
          tf.reshape(mask, shape))


def batch_losses(user: list[tf.Tensor], item_embeddings: tf.Tensor, item_biases: tf.Tensor, mean: tf.Tensor | None,
                 labels: tf.Tensor, mask: tf.Tensor, *, objective: str, l2: float) -> tuple[tf.Tensor, tf.Tensor]:
  """Each user's batch-mean `mf.RegularizedLoss` [users] (0 for an empty batch) and batch sizes [users].

  Args:
    user: [p_u [users, 1, d]] (+ [b_u [users, 1, 1]] for ratings).
    item_embeddings: [users, B, d] rows of the batch's items.
    item_biases: [users, B, 1].
    mean: The global mean mu broadcastable to [users, B, 1] (ratings), else None.
    labels, mask: [users, B].
    objective: `mf.RATING` or `mf.IMPLICIT`.
    l2: The model's L2 strength.
  """
  p_u, b_u = (user[0], user[1]) if objective == mf.RATING else (user[0], None)
  score = mf.predict(p_u, item_embeddings, item_biases, b_u, mean)  # [users, B, 1]
  predictions = tf.concat([score, mf.l2_penalty(p_u, item_embeddings, l2)], axis=-1)
  per_example = mf.RegularizedLoss(objective).call(tf.reshape(labels, [-1, 1]), tf.reshape(predictions, [-1, 2]))
  per_example = tf.reshape(per_example, tf.shape(labels)) * mask
  counts = tf.reduce_sum(mask, axis=1)
  return tf.math.divide_no_nan(tf.reduce_sum(per_example, axis=1), counts), counts


def reconstruct(item_embedding: tf.Tensor, item_bias: tf.Tensor, mean: tf.Tensor | None, items: tf.Tensor,
                labels: tf.Tensor, mask: tf.Tensor, *, objective: str, l2: float, learning_rate: float,
                epochs: int, coefficients: bool = False) -> list[tf.Tensor] | tuple[list[tf.Tensor], list[tf.Tensor]]:
  """Every user's local parameters from zeros: SGD on its [users, batches, B] batches, items frozen.

  (`tf.expand_dims` rather than `[..., None]`: TFLite's builtin strided slice has no new axes.)

  The gradient of the batch-mean `mf.RegularizedLoss` is written out (by hand:
  a handful of ops per step instead of a tape's, for serving latency;
  `tests/models/test_reconstruction.py` checks it against the tape):
  d/dp_u = mean_b[g_b q_b] + 2 lambda p_u and d/db_u = mean_b[g_b], where
  g = sigmoid(s) - y (implicit) or 2 (s - r) (rating).

  Returns [p_u [users, 1, d]] (+ [b_u [users, 1, 1]] for ratings); with `coefficients`, also each support
  example's exact share of them: [c [users, batches, B]] (+ [c_b] for ratings) with p_u = sum_e c_e q_e and
  b_u = sum_e c_b,e, since every step adds -lr g_e q_e and shrinks p_u by (1 - 2 lr lambda). `recommend`'s
  explanations split each score among the history items by these shares.
  """
  rating = objective == mf.RATING
  users, batches = tf.shape(items)[0], tf.shape(items)[1]
  p_u = tf.zeros([users, 1, tf.shape(item_embedding)[1]], item_embedding.dtype)
  b_u = tf.zeros([users, 1, 1])
  counts = tf.reduce_sum(mask, axis=2, keepdims=True)  # [users, batches, 1]
  weights = tf.math.divide_no_nan(mask, counts)  # The batch mean's weight of each example.
  nonempty = tf.cast(counts > 0, p_u.dtype)

  def step(s, p_u, b_u, c, c_b):
    t = s % batches
    q = tf.gather(item_embedding, items[:, t])  # [users, B, d]
    score = tf.reduce_sum(p_u * q, -1) + tf.gather(item_bias, items[:, t])[..., 0]  # [users, B]
    if rating:
      score = score + (b_u + mean)[:, :, 0]
      g = 2.0 * (score - labels[:, t])
    else:
      g = tf.sigmoid(score) - labels[:, t]
    g = g * weights[:, t]
    p_u = p_u - learning_rate * (tf.reduce_sum(tf.expand_dims(g, -1) * q, 1, keepdims=True) + 2.0 * l2 * p_u *
                                 tf.expand_dims(nonempty[:, t], -1))
    if rating:
      b_u = b_u - learning_rate * tf.reshape(tf.reduce_sum(g, 1), [-1, 1, 1])
    if coefficients:
      step_shares = _at_batch(-learning_rate * g, t, batches)
      c = c * (1.0 - 2.0 * learning_rate * l2 * nonempty[:, t:t + 1]) + step_shares
      if rating:
        c_b = c_b + step_shares
    return s + 1, p_u, b_u, c, c_b

  shares = tf.zeros(tf.shape(items), p_u.dtype) if coefficients else tf.zeros([])
  _, p_u, b_u, c, c_b = tf.while_loop(lambda s, *_: s < epochs * batches, step,
                                      (tf.constant(0), p_u, b_u, shares, shares))
  user = [p_u, b_u] if rating else [p_u]
  if coefficients:
    return user, ([c, c_b] if rating else [c])
  return user


def _at_batch(values: tf.Tensor, t: tf.Tensor, batches: tf.Tensor) -> tf.Tensor:
  """[users, B] values placed at batch t of a [users, batches, B] tensor of zeros: one SGD step's shares."""
  return tf.reshape(tf.one_hot(t, batches, dtype=values.dtype), [1, -1, 1]) * tf.expand_dims(values, 1)


def retrieval_batch_losses(query: tf.Tensor, candidates: tf.Tensor, labels: tf.Tensor,
                           mask: tf.Tensor) -> tf.Tensor:
  """Each user's `two_tower.RetrievalLoss` on one batch [users], many users at once.

  The TFRS retrieval softmax of each positive against the batch's negatives
  (the user's other positives removed as accidental hits), averaged over the
  batch's positives: loss_i = logsumexp({s_i} + {s_n: n negative}) - s_i with
  s = <query, candidate>. Written by hand because TFRS's task takes one query
  batch at a time; `tests/models/test_reconstruction.py` checks it against it.

  Args:
    query: [users, 1, d].
    candidates: [users, B, d] candidate embeddings of the batch's items.
    labels, mask: [users, B] (1 = positive; 1 = a real example).
  """
  scores = tf.reduce_sum(query * candidates, -1)  # [users, B]
  positive, negative = labels * mask, (1.0 - labels) * mask
  excluded = -1e9  # Not -inf: keeps the gradient finite for a batch without negatives.
  negatives = tf.reduce_logsumexp(tf.where(negative > 0, scores, excluded), axis=1, keepdims=True)
  per_positive = (tf.reduce_logsumexp(tf.stack([scores, tf.broadcast_to(negatives, tf.shape(scores))]), axis=0)
                  - scores) * positive
  return tf.math.divide_no_nan(tf.reduce_sum(per_positive, axis=1), tf.reduce_sum(positive, axis=1))


def retrieval_score_gradients(query: tf.Tensor, candidates: tf.Tensor, labels: tf.Tensor,
                              mask: tf.Tensor) -> tf.Tensor:
  """d `retrieval_batch_losses` / d score of each example [users, B], in closed form.

  With s_n = <query, c_n>, N = logsumexp of the negatives' scores, sigma_i = sigmoid(s_i - N) and P positives:
  a positive i gets (sigma_i - 1) / P and a negative n gets softmax_n(negatives) * sum_i (1 - sigma_i) / P, so
  the query's gradient is sum_n g_n c_n. Written by hand (as MF's SGD step is) because a gradient tape's ops are
  not TFLite's builtin ones, and the on-device model reconstructs the query too;
  `tests/models/test_reconstruction.py` checks it against the tape.
  """
  scores = tf.reduce_sum(query * candidates, -1)  # [users, B]
  positive, negative = labels * mask, (1.0 - labels) * mask
  excluded = -1e9  # As retrieval_batch_losses: a batch without negatives has N = -1e9 + log B.
  negatives = tf.reduce_logsumexp(tf.where(negative > 0, scores, excluded), axis=1, keepdims=True)  # [users, 1]
  sigma = tf.sigmoid(scores - negatives)
  weights = tf.math.divide_no_nan(1.0, tf.reduce_sum(positive, axis=1, keepdims=True))  # 1 / P (0 without any).
  pulled = tf.reduce_sum(positive * (1.0 - sigma), axis=1, keepdims=True)  # sum_i (1 - sigma_i)
  softmax = tf.where(negative > 0, tf.exp(scores - negatives), 0.0)
  return weights * (positive * (sigma - 1.0) + softmax * pulled)


def reconstruct_query(candidates: tf.Tensor, items: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor, *,
                      learning_rate: float, epochs: int,
                      coefficients: bool = False) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
  """Every user's two-tower query embedding [users, 1, d] from zeros: SGD on the retrieval loss, items frozen.

  `candidates` is the candidate tower over the catalogue (`two_tower.candidate_table`). With `coefficients`,
  also each support example's exact share c [users, batches, B]: query = sum_e c_e candidate_e (as
  `reconstruct`'s, without the L2 shrinkage).
  """
  users, batches = tf.shape(items)[0], tf.shape(items)[1]
  query = tf.zeros([users, 1, tf.shape(candidates)[1]], candidates.dtype)

  def step(s, query, c):
    t = s % batches
    batch = tf.gather(candidates, items[:, t])  # [users, B, d]
    gradient = retrieval_score_gradients(query, batch, labels[:, t], mask[:, t])  # [users, B]
    if coefficients:
      c = c + _at_batch(-learning_rate * gradient, t, batches)
    return (s + 1, query - learning_rate * tf.reduce_sum(tf.expand_dims(gradient, -1) * batch, 1, keepdims=True),
            c)

  shares = tf.zeros(tf.shape(items), candidates.dtype) if coefficients else tf.zeros([])
  _, query, c = tf.while_loop(lambda s, *_: s < epochs * batches, step, (tf.constant(0), query, shares))
  return (query, c) if coefficients else query

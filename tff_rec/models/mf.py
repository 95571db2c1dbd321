"""Matrix factorization with a local user and global items, for Federated Reconstruction.

Koren, Bell & Volinsky, "Matrix Factorization Techniques for Recommender
Systems" (IEEE Computer 2009); federated with Federated Reconstruction
(Singhal et al., "Federated Reconstruction: Partially Local Federated
Learning", NeurIPS 2021), following google-research/federated
`reconstruction/movielens`.

One client holds one user u. For an item i the model scores

    rating objective:    r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>
    implicit objective:  logit(u, i) =        b_i + <p_u, q_i>

The user parameters (p_u, b_u) are *local*: a single row, reconstructed on the
client from its own data each round and never sent. The item table (q, b) and
mu are *global*. Item index 0 is the out-of-vocabulary item.

TFF's reconstruction loop computes the loss as `loss_fn()(labels, predictions)`
and ignores Keras regularizers, so the model emits a second column with the
per-example L2 penalty lambda * (|p_u|^2 + |q_i|^2), the regularization of SGD
matrix factorization (Koren et al., eq. 2, applied to the rows a batch
touches), and `RegularizedLoss` adds it to the data loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow as tf

RATING, IMPLICIT = 'rating', 'implicit'
OBJECTIVES = (RATING, IMPLICIT)


@dataclasses.dataclass(frozen=True)
class MFConfig:
  num_items: int  # Catalogue size, excluding the OOV index 0.
  embedding_dim: int = 32
  l2: float = 0.0
  init_stddev: float = 0.1
  objective: str = IMPLICIT
  global_mean: float = 3.5  # Initial mu (rating objective).
  seed: int = 0  # Seed of the item-embedding initializer.

  def validate(self) -> None:
    if self.objective not in OBJECTIVES:
      raise ValueError(f'objective must be one of {OBJECTIVES}, got {self.objective!r}')
    if self.num_items < 1 or self.embedding_dim < 1:
      raise ValueError(f'num_items and embedding_dim must be >= 1, got {self.num_items}, {self.embedding_dim}')
    if self.l2 < 0 or self.init_stddev <= 0:
      raise ValueError(f'l2 must be >= 0 and init_stddev > 0, got {self.l2}, {self.init_stddev}')


class UserRow(tf.keras.layers.Layer):
  """The local user: one embedding row (and a bias), broadcast over a batch.

  Initialized to zeros, so reconstruction is deterministic and starts from
  "no preference". The bias exists only where it changes the output (rating).
  """

  def __init__(self, dim: int, with_bias: bool, **kwargs):
    super().__init__(**kwargs)
    self.dim = dim
    self.with_bias = with_bias

  def build(self, input_shape):
    self.embedding = self.add_weight(name='user_embedding', shape=(1, self.dim), initializer='zeros')
    if self.with_bias:
      self.bias = self.add_weight(name='user_bias', shape=(1, 1), initializer='zeros')
    super().build(input_shape)

  def call(self, item_indices):
    batch = tf.shape(item_indices)[0]
    embedding = tf.tile(self.embedding, [batch, 1])
    if not self.with_bias:
      return embedding
    return embedding, tf.tile(self.bias, [batch, 1])


class GlobalMean(tf.keras.layers.Layer):
  """The global rating offset mu, a trainable scalar."""

  def __init__(self, initial: float, **kwargs):
    super().__init__(**kwargs)
    self.initial = initial

  def build(self, input_shape):
    self.mean = self.add_weight(name='global_mean', shape=(), initializer=tf.keras.initializers.Constant(self.initial))
    super().build(input_shape)

  def call(self, item_indices):
    return tf.fill([tf.shape(item_indices)[0], 1], self.mean)


@dataclasses.dataclass(frozen=True)
class ModelBundle:
  """A Keras model and which of its layers are global and which local."""

  model: tf.keras.Model
  global_layers: list[tf.keras.layers.Layer]
  local_layers: list[tf.keras.layers.Layer]
  input_spec: Any
  score_fn: Callable[[tf.Tensor], tf.Tensor] = lambda y_pred: scores(y_pred)  # Model output -> scores [batch].


def input_spec() -> tuple[tf.TensorSpec, tf.TensorSpec]:
  """(item indices [batch], labels [batch, 1]): ratings, or 1/0 for implicit."""
  return (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 1], tf.float32))


def predict(p_u: tf.Tensor, q_i: tf.Tensor, b_i: tf.Tensor, b_u: tf.Tensor | None = None,
            mu: tf.Tensor | None = None) -> tf.Tensor:
  """The MF score <p_u, q_i> + b_i (+ b_u + mu for ratings); embeddings [..., d], biases [..., 1] -> [..., 1].

  Shared by the Keras model and the shard process's batched client maths
  (`tff_rec.federated.shard_math`), which broadcasts one user over a batch.
  """
  score = tf.reduce_sum(p_u * q_i, axis=-1, keepdims=True) + b_i
  if b_u is not None:
    score = score + b_u + mu
  return score


def l2_penalty(p_u: tf.Tensor, q_i: tf.Tensor, l2: float) -> tf.Tensor:
  """Per-example lambda * (|p_u|^2 + |q_i|^2), [..., 1]."""
  return l2 * (tf.reduce_sum(tf.square(p_u), -1, keepdims=True) + tf.reduce_sum(tf.square(q_i), -1, keepdims=True))


def build_mf(config: MFConfig) -> ModelBundle:
  """Builds the functional MF model; output is [batch, 2] = (score, L2 penalty)."""
  config.validate()
  items = tf.keras.Input(shape=(), dtype=tf.int64, name='item_index')
  init = tf.keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed)
  item_embedding = tf.keras.layers.Embedding(config.num_items + 1, config.embedding_dim,
                                             embeddings_initializer=init, name='item_embedding')
  item_bias = tf.keras.layers.Embedding(config.num_items + 1, 1, embeddings_initializer='zeros', name='item_bias')
  rating = config.objective == RATING
  user = UserRow(config.embedding_dim, with_bias=rating, name='user')
  p_u = user(items)
  if rating:
    p_u, b_u = p_u
  q_i = item_embedding(items)
  global_layers = [item_embedding, item_bias]
  local_layers = [user]
  if rating:
    mean = GlobalMean(config.global_mean, name='global_mean')
    score = predict(p_u, q_i, item_bias(items), b_u, mean(items))
    global_layers.append(mean)
  else:
    score = predict(p_u, q_i, item_bias(items))
  output = tf.concat([score, l2_penalty(p_u, q_i, config.l2)], axis=-1)
  return ModelBundle(tf.keras.Model(items, output, name='mf'), global_layers, local_layers, input_spec())


def user_table_input_spec() -> tuple[tf.TensorSpec, tf.TensorSpec]:
  """((user index, item index) pairs [batch, 2], labels [batch, 1])."""
  return (tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([None, 1], tf.float32))


def build_mf_user_table(config: MFConfig, num_users: int, *, users_are_local: bool) -> ModelBundle:
  """MF over a table of users (a client holding many users), input (user, item) pairs.

  Same scores as `build_mf`. Used where one client holds many users or the
  user table itself is trained: cross-silo Federated Reconstruction (the
  table is local: each platform reconstructs its own users' rows from zeros,
  and they never leave it), and the FedAvg baseline (the table is global: every
  user's embedding goes to every client; a baseline only, never a default).
  """
  config.validate()
  pairs = tf.keras.Input(shape=(2,), dtype=tf.int64, name='user_item')
  users, items = pairs[:, 0], pairs[:, 1]
  init = tf.keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed)
  item_embedding = tf.keras.layers.Embedding(config.num_items + 1, config.embedding_dim,
                                             embeddings_initializer=init, name='item_embedding')
  item_bias = tf.keras.layers.Embedding(config.num_items + 1, 1, embeddings_initializer='zeros', name='item_bias')
  user_embedding = tf.keras.layers.Embedding(num_users, config.embedding_dim, embeddings_initializer='zeros',
                                             name='user_embedding')
  p_u, q_i = user_embedding(users), item_embedding(items)
  global_layers, user_layers = [item_embedding, item_bias], [user_embedding]
  if config.objective == RATING:
    user_bias = tf.keras.layers.Embedding(num_users, 1, embeddings_initializer='zeros', name='user_bias')
    mean = GlobalMean(config.global_mean, name='global_mean')
    score = predict(p_u, q_i, item_bias(items), user_bias(users), mean(items))
    global_layers.append(mean)
    user_layers.append(user_bias)
  else:
    score = predict(p_u, q_i, item_bias(items))
  output = tf.concat([score, l2_penalty(p_u, q_i, config.l2)], axis=-1)
  model = tf.keras.Model(pairs, output, name='mf_user_table')
  if users_are_local:
    return ModelBundle(model, global_layers, user_layers, user_table_input_spec())
  return ModelBundle(model, user_layers + global_layers, [], user_table_input_spec())


class RegularizedLoss(tf.keras.losses.Loss):
  """Data loss on column 0 of the prediction plus the penalty in column 1."""

  def __init__(self, objective: str, name: str = 'regularized_loss', **kwargs):
    super().__init__(name=name, **kwargs)
    self.objective = objective

  def call(self, y_true, y_pred):
    score, penalty = y_pred[:, 0], y_pred[:, 1]
    label = tf.cast(y_true[:, 0], score.dtype)
    if self.objective == RATING:
      data = tf.square(label - score)
    else:
      data = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=score)
    return data + penalty

  def get_config(self):
    return {**super().get_config(), 'objective': self.objective}


def scores(y_pred: tf.Tensor) -> tf.Tensor:
  """The score column of the model's output."""
  return y_pred[:, 0]

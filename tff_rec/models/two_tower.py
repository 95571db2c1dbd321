"""A two-tower retrieval model with a local query tower, trained with TFRS's retrieval task.

Two-tower retrieval (Yi et al., "Sampling-Bias-Corrected Neural Modeling for
Large Corpus Item Recommendations", RecSys 2019) as in TensorFlow Recommenders:
a query tower and a candidate tower meet in a dot product, trained with
`tfrs.tasks.Retrieval`'s softmax over the batch's candidates. Federated with
Federated Reconstruction (Singhal et al., NeurIPS 2021): the query tower is the
user's own embedding, local to the client (reconstructed each round, never
sent); the candidate tower is global.

The candidate tower sums an item-id embedding, a projection of the item's
dense features (genre multi-hot, and with `--item_text_features` its title's
pretrained word-vector embedding, `tff_rec.data.text`) and an embedding of its
release-year bucket. The features
are constant tables indexed by the item index, so the model's input stays
item indices (the MF input spec, `mf.input_spec`) and the tower scores every
item of the catalogue, also one no training batch ever held.

TFRS models are subclassed `tfrs.Model`s, which `tff.learning` cannot wrap, so
the towers here are functional Keras and the TFRS task lives in the loss
(`RetrievalLoss`). The model outputs [batch, 2 * dim]: query then candidate
embedding of each (user, item) example.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tff_rec.data import schema
from tff_rec.models import mf

YEAR_BUCKET_START, YEAR_BUCKET_WIDTH, NUM_YEAR_BUCKETS = 1920, 5, 18  # Bucket 0: unknown or before 1920.


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
  """Per item index (0 = unknown item, all zeros): genre multi-hot, year bucket[, title vector]."""

  genres: np.ndarray  # float32 [items + 1, NUM_GENRES] (or already `dense`: see `dense`)
  year_buckets: np.ndarray  # int64 [items + 1]
  text: np.ndarray | None = None  # float32 [items + 1, text dim]: the title's vector (`tff_rec.data.text`).

  @property
  def dense(self) -> np.ndarray:
    """What the dense projection reads: the genres, then the title vector if any [items + 1, genres (+ text)]."""
    if self.text is None:
      return self.genres
    return np.concatenate([self.genres, self.text], axis=1).astype(np.float32)


def year_bucket(year: int) -> int:
  """0 for unknown (0) or pre-1920 years, else 1 + 5-year bins, the last open-ended."""
  if year < YEAR_BUCKET_START:
    return 0
  return min(1 + (year - YEAR_BUCKET_START) // YEAR_BUCKET_WIDTH, NUM_YEAR_BUCKETS - 1)


def item_features(db_path: str, vocabulary: list[str], text: bool = False) -> ItemFeatures:
  """Reads the `items` table: features in vocabulary order (index i + 1 = vocabulary[i]); with `text`, the
  `item_text` table's title vectors too (an error if the data was prepared without them)."""
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    rows = {r[0]: (r[1] or 0, r[2] or '') for r in con.execute('SELECT item_id, year, genres FROM items')}
    vocabulary_row = con.execute("SELECT value FROM tff_rec_metadata WHERE key = 'genres'").fetchone()
    vectors = _title_vectors(con, db_path, vocabulary) if text else None
  finally:
    con.close()
  genre_names = json.loads(vocabulary_row[0]) if vocabulary_row else schema.GENRES  # The dataset's own vocabulary.
  genres = np.zeros((len(vocabulary) + 1, schema.NUM_GENRES), np.float32)
  years = np.zeros(len(vocabulary) + 1, np.int64)
  index = {g: i for i, g in enumerate(genre_names)}
  for i, item in enumerate(vocabulary, start=1):
    year, names = rows[item]
    years[i] = year_bucket(int(year))
    for name in filter(None, names.split('|')):
      genres[i, index[name]] = 1.0
  return ItemFeatures(genres, years, vectors)


def _title_vectors(con: sqlite3.Connection, db_path: str, vocabulary: list[str]) -> np.ndarray:
  """[items + 1, dim] title vectors in vocabulary order from `item_text` (row 0, the unknown item, zeros)."""
  try:
    stored = {r[0]: r[1] for r in con.execute('SELECT item_id, vector FROM item_text')}
  except sqlite3.OperationalError:
    stored = {}  # Prepared before title vectors existed.
  missing = [item for item in vocabulary if item not in stored]
  if missing:
    raise ValueError(f'{db_path} has no title vector for {len(missing):,} of {len(vocabulary):,} items (e.g. '
                     f'{missing[0]!r}): prepare it again with --item_text_encoder=glove to use --item_text_features')
  first = np.frombuffer(stored[vocabulary[0]], '<f4')
  out = np.zeros((len(vocabulary) + 1, first.size), np.float32)
  for i, item in enumerate(vocabulary, start=1):
    out[i] = np.frombuffer(stored[item], '<f4')
  return out


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
  num_items: int
  embedding_dim: int = 32
  init_stddev: float = 0.1
  seed: int = 0

  def validate(self) -> None:
    if self.num_items < 1 or self.embedding_dim < 1 or self.init_stddev <= 0:
      raise ValueError(f'num_items and embedding_dim must be >= 1 and init_stddev > 0, got {self}')


def build_two_tower(config: TwoTowerConfig, features: ItemFeatures) -> mf.ModelBundle:
  """Query tower: the local user row; candidate tower: id + dense features (genres[, title]) + year, global."""
  config.validate()
  dense = features.dense
  if dense.shape[0] != config.num_items + 1:
    raise ValueError(f'item features cover {dense.shape[0] - 1} items, the model {config.num_items}')
  items = tf.keras.Input(shape=(), dtype=tf.int64, name='item_index')
  init = tf.keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed)
  id_embedding = tf.keras.layers.Embedding(config.num_items + 1, config.embedding_dim, embeddings_initializer=init,
                                           name='item_embedding')
  genre_projection = tf.keras.layers.Dense(config.embedding_dim, use_bias=False, name='genre_projection',
                                           kernel_initializer=tf.keras.initializers.GlorotNormal(seed=config.seed))
  year_embedding = tf.keras.layers.Embedding(NUM_YEAR_BUCKETS, config.embedding_dim, embeddings_initializer=init,
                                             name='year_embedding')
  genres = tf.gather(tf.constant(dense), items)
  years = tf.gather(tf.constant(features.year_buckets), items)
  candidate = id_embedding(items) + genre_projection(genres) + year_embedding(years)
  user = mf.UserRow(config.embedding_dim, with_bias=False, name='user')
  query = user(items)
  model = tf.keras.Model(items, tf.concat([query, candidate], axis=-1), name='two_tower')
  return mf.ModelBundle(model, [id_embedding, genre_projection, year_embedding], [user], mf.input_spec(),
                        score_fn=lambda y: dot_scores(y, config.embedding_dim))


def candidate_table(weights: list[np.ndarray], features: ItemFeatures) -> np.ndarray:
  """Every item's candidate embedding [items + 1, dim] from the global weights (`build_two_tower`'s order)."""
  id_embedding, genre_projection, year_embedding = weights
  return (id_embedding + features.dense @ genre_projection + year_embedding[features.year_buckets]).astype(np.float32)


def dot_scores(y_pred: tf.Tensor, dim: int) -> tf.Tensor:
  """<query, candidate> of each example of the model's output."""
  return tf.reduce_sum(y_pred[:, :dim] * y_pred[:, dim:], axis=-1)


class RetrievalLoss(tf.keras.losses.Loss):
  """`tfrs.tasks.Retrieval`'s softmax loss over a client's batch.

  Each positive (label 1) is scored against every candidate of the batch: the
  other examples' items, including the sampled negatives (label 0) that make
  in-batch softmax informative when a batch holds one user's items. The
  batch's other positives are the same user's items, not negatives: they are
  removed as accidental hits (they share one candidate id). The loss is the
  mean over the batch's positives.
  """

  def __init__(self, dim: int, name: str = 'retrieval_loss', **kwargs):
    super().__init__(name=name, **kwargs)
    self.dim = dim
    self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True)

  def call(self, y_true, y_pred):
    query, candidate = y_pred[:, :self.dim], y_pred[:, self.dim:]
    positive = y_true[:, 0] > 0.5
    positives = tf.boolean_mask(candidate, positive)
    negatives = tf.boolean_mask(candidate, tf.logical_not(positive))
    num_positives = tf.shape(positives)[0]
    ids = tf.concat([tf.zeros([num_positives], tf.int32), tf.range(1, tf.shape(negatives)[0] + 1)], axis=0)
    total = self.task(tf.boolean_mask(query, positive), tf.concat([positives, negatives], axis=0),
                      candidate_ids=ids, compute_metrics=False, compute_batch_metrics=False)
    return tf.math.divide_no_nan(total, tf.cast(num_positives, total.dtype))

  def get_config(self):
    return {**super().get_config(), 'dim': self.dim}

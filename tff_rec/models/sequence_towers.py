"""The sequence two-tower as Keras functional towers, over `tff_rec.models.sequence`'s maths.

The candidate tower is functional Keras as `two_tower.build_two_tower`'s: an
item-id `Embedding`, a `Dense` projection of the item's dense public features
(genres[, title vector]) and a year-bucket `Embedding`, summed. The query tower
reads the history's items through those same layers (the item embedding is
shared) and a `CausalTransformer` layer: SASRec's learned positions, causal
self-attention blocks and final layer norm (Kang & McAuley, ICDM 2018), whose
`call` is `sequence.query_states` on the layer's own weights, so the maths exist
once. The towers hold the weights in `sequence.weight_names` order
(`SequenceTowers.variables`): the centralized engine trains them and the
SavedModel serves them; federated training runs the same maths batched over a
shard's users (`tff_rec.federated.sequence_math`), which Keras layers have no
form for, and the two are tested equal (a full-batch epoch here is a FedSGD
round there).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tff_rec.models import sequence, two_tower


class CausalTransformer(tf.keras.layers.Layer):
  """Positions + `num_blocks` pre-norm causal self-attention blocks + final layer norm over item embeddings.

  Inputs: item embeddings [B, L, d] (left-padded), `present` [B, L] (1 where an
  item is) and, in training, `seeds` [B, 2] int64 (each user's dropout seed).
  Output: the state at every position [B, L, d].
  """

  def __init__(self, config: sequence.SequenceConfig, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.ordered: list[tf.Variable] = []

  def build(self, input_shape):
    del input_shape
    shapes = [w.shape for w in sequence.initial_weights(self.config)][sequence.POSITION:]
    names = sequence.weight_names(self.config)[sequence.POSITION:]
    self.ordered = [self.add_weight(name=name, shape=shape, initializer='zeros', trainable=True)
                    for name, shape in zip(names, shapes)]
    super().build(None)

  def call(self, inputs, present, seeds=None, training=None):
    # sequence.query_states reads weights by index in the full list; the candidate tower's three are not read.
    weights = [None] * sequence.POSITION + [w[None] for w in self.ordered]
    return sequence.query_states(weights, self.config, inputs, present, seeds if training else None)

  def get_config(self):
    return {**super().get_config(), 'config': dataclasses.asdict(self.config)}


@dataclasses.dataclass(frozen=True)
class SequenceTowers:
  """`candidate`: item indices [B, K] int64 -> [B, K, d]; `query`: (history [B, L] int64 catalogue indices,
  left-padded with 0, time order; seeds [B, 2] int64) -> states [B, L, d] (the user's query: the last);
  `variables`: every weight, in `sequence.weight_names` order."""

  candidate: tf.keras.Model
  query: tf.keras.Model
  variables: list[tf.Variable]

  def set_weights(self, weights) -> None:
    if len(weights) != len(self.variables):
      raise ValueError(f'the towers have {len(self.variables)} weights, got {len(weights)}')
    for variable, value in zip(self.variables, weights):
      variable.assign(value)


def build_towers(config: sequence.SequenceConfig, features: two_tower.ItemFeatures,
                 weights: list[np.ndarray] | None = None) -> SequenceTowers:
  """The functional towers, holding `weights` (default: `sequence.initial_weights(config)`, as federated
  training starts)."""
  config.validate()
  dense = features.dense
  if dense.shape != (config.num_items + 1, config.dense_features):
    expected = (config.num_items + 1, config.dense_features)
    raise ValueError(f'item features are {dense.shape}, the model takes {expected}')
  d = config.embedding_dim
  id_embedding = tf.keras.layers.Embedding(config.num_items + 1, d, name='item_embedding')
  dense_projection = tf.keras.layers.Dense(d, use_bias=False, name='dense_projection')
  year_embedding = tf.keras.layers.Embedding(two_tower.NUM_YEAR_BUCKETS, d, name='year_embedding')
  dense_table, year_table = tf.constant(dense), tf.constant(features.year_buckets)

  def embed(items):
    return id_embedding(items) + dense_projection(tf.gather(dense_table, items)) + year_embedding(
        tf.gather(year_table, items))

  items = tf.keras.Input(shape=(None,), dtype=tf.int64, name='item_index')
  candidate = tf.keras.Model(items, embed(items), name='sequence_candidate_tower')
  history = tf.keras.Input(shape=(config.max_history,), dtype=tf.int64, name='history')
  seeds = tf.keras.Input(shape=(2,), dtype=tf.int64, name='seeds')
  transformer = CausalTransformer(config, name='causal_transformer')
  states = transformer(embed(history), tf.cast(history > 0, tf.float32), seeds)
  query = tf.keras.Model([history, seeds], states, name='sequence_query_tower')
  towers = SequenceTowers(candidate, query, [id_embedding.embeddings, dense_projection.kernel,
                                             year_embedding.embeddings] + transformer.ordered)
  towers.set_weights(sequence.initial_weights(config) if weights is None else weights)
  return towers

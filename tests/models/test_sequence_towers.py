"""The sequence two-tower's functional Keras towers compute `sequence`'s maths on their own weights."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.federated import sequence_math
from tff_rec.models import sequence, sequence_towers, two_tower

CONFIG = sequence.SequenceConfig(num_items=12, dense_features=3, embedding_dim=4, max_history=5, num_blocks=2,
                                 dropout=0.4, init_stddev=0.3, seed=2)


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  features = two_tower.ItemFeatures((rng.random((13, 3)) < 0.5).astype(np.float32), rng.integers(0, 18, 13))
  # Perturbed so that every weight (layer norms and biases included) is away from its initial value.
  weights = [w + rng.normal(0, 0.2, w.shape).astype(np.float32) for w in sequence.initial_weights(CONFIG)]
  return features, weights, sequence_towers.build_towers(CONFIG, features, weights)


def test_the_towers_hold_the_weights_in_the_models_order(setup):
  _, weights, towers = setup
  assert len(towers.variables) == len(sequence.weight_names(CONFIG)) == 4 + 2 * 11 + 2
  for variable, name, value in zip(towers.variables, sequence.weight_names(CONFIG), weights):
    assert name in variable.name, (name, variable.name)
    np.testing.assert_array_equal(variable.numpy(), value)
  assert {id(v) for v in towers.query.trainable_weights} == {id(v) for v in towers.variables}  # One item table.
  assert all(isinstance(layer, tf.keras.layers.Layer) for layer in towers.query.layers)
  with pytest.raises(ValueError, match='the towers have 28 weights, got 3'):
    towers.set_weights(weights[:3])


def test_the_candidate_tower_is_the_catalogue_table(setup):
  features, weights, towers = setup
  table = sequence_math.catalogue_table(sequence.expand(weights), features).numpy()
  np.testing.assert_allclose(towers.candidate(tf.range(13, dtype=tf.int64)[None])[0].numpy(), table, atol=1e-6)
  rows = np.array([[3, 1], [12, 0]])
  np.testing.assert_allclose(towers.candidate(rows).numpy(), table[rows], atol=1e-6)


def test_the_query_tower_is_the_query_states_with_dropout_only_in_training(setup):
  features, weights, towers = setup
  expanded = sequence.expand(weights)
  table = sequence_math.catalogue_table(expanded, features)
  history, present = sequence.pad_histories([np.array([4, 9, 2]), np.array([1, 2, 3, 4, 5, 6, 7])], 5)
  seeds = tf.constant([[5, 0], [6, 0]], tf.int64)
  served = towers.query([history, tf.zeros([2, 2], tf.int64)]).numpy()
  np.testing.assert_allclose(served[:, -1], sequence_math.user_queries(expanded, CONFIG, table, history,
                                                                       present).numpy(), atol=1e-5)
  np.testing.assert_allclose(towers.query([history, seeds], training=False).numpy(), served, atol=1e-6)
  trained = towers.query([history, seeds], training=True).numpy()
  expected = sequence.query_states(expanded, CONFIG, tf.gather(table, history), present, seeds).numpy()
  np.testing.assert_allclose(trained, expected, atol=1e-5)
  assert not np.allclose(trained, served, atol=1e-3)  # Dropout drew something.


def test_features_must_cover_the_catalogue(setup):
  features, _, _ = setup
  with pytest.raises(ValueError, match=r'item features are \(13, 3\), the model takes \(21, 3\)'):
    sequence_towers.build_towers(sequence.SequenceConfig(**{**CONFIG.__dict__, 'num_items': 20}), features)

"""The sequence two-tower's maths: TFRS's retrieval loss, causality, padding, and per-user weight copies."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tff_rec.models import sequence

CONFIG = sequence.SequenceConfig(num_items=30, dense_features=5, embedding_dim=8, max_history=6, num_blocks=2,
                                 dropout=0.0, init_stddev=0.3, seed=1)


def _weights():
  return sequence.expand(sequence.initial_weights(CONFIG))


def test_weights_are_seeded_and_named():
  a, b = sequence.initial_weights(CONFIG), sequence.initial_weights(CONFIG)
  assert len(a) == len(sequence.weight_names(CONFIG)) == 4 + 2 * 11 + 2
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not a[sequence.ITEM][0].any()  # The unknown item.
  other = sequence.initial_weights(sequence.SequenceConfig(**{**CONFIG.__dict__, 'seed': 2}))
  assert not np.allclose(a[sequence.ITEM], other[sequence.ITEM])
  with pytest.raises(ValueError, match='dropout must be in'):
    sequence.SequenceConfig(num_items=3, dense_features=1, dropout=1.0).validate()


def test_the_loss_is_tfrs_retrieval_with_the_users_items_as_accidental_hits():
  rng = np.random.default_rng(0)
  length, rows, dim = 4, 7, 3
  states = rng.normal(size=(1, length, dim)).astype(np.float32)
  candidates = rng.normal(size=(1, rows, dim)).astype(np.float32)
  # Rows 0-4 are the user's items (row 0 its first input only), 5-6 sampled negatives; position t predicts t + 1.
  targets = np.array([[1, 2, 3, 4]], np.int32)
  positive = np.array([[1, 1, 1, 1, 1, 0, 0]], np.float32)
  total, count = sequence.next_item_losses(tf.constant(states), tf.constant(candidates), tf.constant(targets),
                                           tf.ones([1, length]), tf.constant(positive), tf.ones([1, rows]))
  # TFRS: each position's positive, then the negatives; the positives share id 0, so each query's other
  # positives are removed as accidental hits (as `two_tower.RetrievalLoss` does).
  task = tfrs.tasks.Retrieval(remove_accidental_hits=True)
  stacked = np.concatenate([candidates[0, targets[0]], candidates[0, 5:]])
  expected = task(states[0], stacked, candidate_ids=tf.constant([0, 0, 0, 0, 1, 2]), compute_metrics=False)
  np.testing.assert_allclose(total.numpy()[0], expected.numpy(), rtol=1e-5)
  assert count.numpy()[0] == 4


def test_states_are_causal_and_left_padding_changes_nothing():
  weights = _weights()
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(1, 4, CONFIG.embedding_dim)).astype(np.float32)
  states = sequence.query_states(weights, CONFIG, tf.constant(inputs), tf.ones([1, 4])).numpy()
  changed = inputs.copy()
  changed[0, 3] += 1.0
  later = sequence.query_states(weights, CONFIG, tf.constant(changed), tf.ones([1, 4])).numpy()
  np.testing.assert_allclose(later[0, :3], states[0, :3], atol=1e-6)  # Position 3 is in nobody's past.
  assert not np.allclose(later[0, 3], states[0, 3])
  padded = np.concatenate([np.full((1, 2, CONFIG.embedding_dim), 5.0, np.float32), inputs], axis=1)
  present = tf.constant([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
  np.testing.assert_allclose(sequence.query_states(weights, CONFIG, tf.constant(padded), present).numpy()[0, 2:],
                             states[0], atol=1e-5)


def test_per_user_copies_give_each_user_its_own_gradient():
  """With dropout: each user's mask is its own, whatever else is in the shard."""
  config = sequence.SequenceConfig(**{**CONFIG.__dict__, 'dropout': 0.3})
  shared = sequence.initial_weights(config)
  histories = [np.array([3, 9, 4, 12, 7]), np.array([5, 6]), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])]
  data = sequence.pack_sequences([sequence.training_example(h, CONFIG.max_history, 3, CONFIG.num_items, seed)
                                  for seed, h in enumerate(histories)], CONFIG.max_history)
  dense = np.random.default_rng(0).normal(size=(CONFIG.num_items + 1, 5)).astype(np.float32)
  years = np.arange(CONFIG.num_items + 1) % 18

  def losses(weights, part):
    rows = data['rows'][part]
    ids = tf.gather(weights[sequence.ITEM], rows, batch_dims=1) if weights[0].shape[0] > 1 else (
        tf.gather(weights[sequence.ITEM][0], rows))
    candidates = sequence.candidate_embeddings(weights, ids, tf.constant(dense[rows]), tf.constant(years[rows]))
    inputs = tf.gather(candidates, data['history'][part], batch_dims=1)
    states = sequence.query_states(weights, config, inputs, data['present'][part], data['seeds'][part])
    return sequence.next_item_losses(states, candidates, data['targets'][part], data['target_mask'][part],
                                     data['positive'][part], data['candidate_mask'][part])[0]

  copies = [tf.Variable(np.repeat(w[None], 3, axis=0)) for w in shared]
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(losses(copies, slice(None)))
  together = tape.gradient(total, copies)
  for u in range(3):
    alone = [tf.Variable(w[None]) for w in shared]
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(losses(alone, slice(u, u + 1)))
    for g_all, g_one in zip(together, tape.gradient(loss, alone)):
      np.testing.assert_allclose(tf.convert_to_tensor(g_all)[u].numpy(), tf.convert_to_tensor(g_one)[0].numpy(),
                                 rtol=1e-4, atol=1e-6)


def test_packing_windows_the_most_recent_items():
  examples = [sequence.training_example(h, 3, 2, 20, seed) for seed, h in
              enumerate([np.arange(1, 11), np.array([4]), np.array([], np.int64)])]
  assert examples[0][0][:4].tolist() == [7, 8, 9, 10] and examples[0][1].tolist() == [1, 1, 1, 1, 0, 0]
  assert len(examples[1][0]) == 1 and len(examples[2][0]) == 0  # Nothing to predict: no negatives either.
  data = sequence.pack_sequences(examples, max_history=3)
  rows = data['rows'][0]
  window = rows[data['history'][0]].tolist() + [rows[data['targets'][0][-1]]]
  assert window == [7, 8, 9, 10]  # The last max_history + 1 items: inputs 7, 8, 9; targets 8, 9, 10.
  assert rows[data['targets'][0]].tolist() == [8, 9, 10]
  assert data['positive'][0][np.searchsorted(rows, [7, 8, 9, 10])].all()
  assert not data['target_mask'][1].any() and not data['target_mask'][2].any()  # Nothing to predict.
  assert not data['candidate_mask'][2].any()
  history, present = sequence.pad_histories([np.arange(1, 11), np.array([4])], 3)
  np.testing.assert_array_equal(history, [[8, 9, 10], [0, 0, 4]])
  np.testing.assert_array_equal(present, [[1, 1, 1], [0, 0, 1]])

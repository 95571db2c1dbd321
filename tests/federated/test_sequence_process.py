"""The sequence two-tower on the shard process: FedAvg of each user's own SGD steps, whatever the shards."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec import centralized, tasks
from tff_rec.data import schema
from tff_rec.federated import fed_recon, process, sequence_math
from tff_rec.models import sequence

SETTINGS = dict(max_history=6, num_blocks=1, dropout=0.3)


@pytest.fixture(scope='module')
def task(tiny_dataset):
  return tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=1),
                                  embedding_dim=4, init_stddev=0.3, model=tasks.SEQUENCE, sequence_settings=SETTINGS)


def _engine(task, users_per_shard, **config):
  config = fed_recon.ReconConfig(**{'server_optimizer': 'sgd', 'server_learning_rate': 1.0,
                                    'client_learning_rate': 0.5, 'local_epochs': 2, 'split_dataset': False,
                                    'client_weighting': 'num_examples', **config})
  return process.ShardEngine(task, config, users_per_shard=users_per_shard, eval_learning_rate=1.0, eval_epochs=1,
                             algorithm='fed_avg')


def _user_update(task, weights, example, learning_rate, steps):
  """One user alone, written out: `steps` SGD steps on its mean next-item loss over the whole catalogue's table."""
  config = task.sequence_config
  data = {k: tf.constant(v) for k, v in sequence.pack_sequences([example], config.max_history).items()}
  variables = [tf.Variable(w) for w in weights]
  for s in range(steps):
    with tf.GradientTape() as tape:
      expanded = [v[None] for v in variables]
      seeds = data['seeds'] + tf.constant([0, 1000], tf.int64) * s
      total, count = sequence_math.shard_losses(expanded, tf.gather(variables[0], data['rows']), data, config,
                                                task.item_features, seeds)
      loss = total[0] / count[0]
    for v, g in zip(variables, tape.gradient(loss, variables)):
      v.assign_sub(learning_rate * tf.convert_to_tensor(g))
  return [w - v.numpy() for w, v in zip(weights, variables)], float(count[0])


@pytest.fixture(scope='module')
def engines(task):
  """Shard sizes 1 and 3 of one configuration (TFF's tracing is the costly part: built once for the module)."""
  return [_engine(task, 1), _engine(task, 3)]


def test_a_round_is_the_weighted_mean_of_each_users_own_sgd_steps_whatever_the_shards(task, engines):
  ids = task.train_data.client_ids[:7]
  examples = task.train_examples(ids, 0, seed=0)
  states = [e.initialize() for e in engines]
  start = engines[0].global_weights(states[0])
  updates, weights = [], []
  for example in examples:
    delta, count = _user_update(task, start, example, 0.5, 2)
    updates.append(delta)
    weights.append(2 * count)  # Predictions x local epochs.
  expected = [w - sum(c * u[i] for c, u in zip(weights, updates)) / sum(weights) for i, w in enumerate(start)]
  for engine, state in zip(engines, states):
    out = engine.next(state, examples)
    for got, want in zip(engine.global_weights(out.state), expected, strict=True):
      np.testing.assert_allclose(got, want, atol=2e-5)
  assert out.metrics['client_work']['train']['num_examples'] == sum(weights)


def test_training_examples_are_the_recent_window_in_time_order_then_negatives(task):
  client = task.train_data.get(task.train_data.client_ids[:1])[0]
  items, labels = task.train_examples(task.train_data.client_ids[:1], 0, seed=0)[0]
  window = client.items[-(SETTINGS['max_history'] + 1):]
  np.testing.assert_array_equal(items[:len(window)], window)
  assert labels[:len(window)].all() and not labels[len(window):].any()
  assert len(items) == len(window) + 1 * SETTINGS['max_history']  # --num_negatives per position.
  again = task.train_examples(task.train_data.client_ids[:1], 1, seed=0)[0][0]
  assert not np.array_equal(again[len(window):], items[len(window):])  # Fresh negatives each round.


def test_evaluation_scores_each_users_history_query_whatever_the_shards(task, engines):
  state = engines[0].initialize()
  clients = task.eval_clients(schema.VAL)
  results = [e.evaluate(state, clients) for e in engines]
  for key, value in results[0].items():
    np.testing.assert_allclose(results[1][key], value, rtol=1e-5, err_msg=key)
  # HR@10 written out: each user's query (its history's last state) ranks its held-out item among the 99.
  config = task.sequence_config
  weights = sequence.expand(engines[0].global_weights(state))
  table = sequence_math.catalogue_table(weights, task.item_features).numpy()
  hits = 0
  for seen, (items, _) in zip(clients.seen, clients.queries):
    history, present = sequence.pad_histories([seen], config.max_history)
    query = sequence.query_states(weights, config, tf.constant(table[history]), tf.constant(present)).numpy()[0, -1]
    scores = table[items[0]] @ query
    hits += int(np.sum(scores[1:] >= scores[0]) < 10)
  assert results[0]['hits_at_10'] == hits and results[0]['count'] == len(clients.seen)


def test_the_sequence_model_trains_only_with_fed_avg(task):
  with pytest.raises(ValueError, match='no per-user parameters and trains with fed_avg, got fed_recon'):
    process.ShardEngine(task, fed_recon.ReconConfig(), users_per_shard=2, eval_learning_rate=1.0, eval_epochs=1)


def test_a_centralized_full_batch_sgd_epoch_is_a_fedsgd_round_of_every_user(task):
  """The centralized baseline runs the same maths: one minibatch of every user with SGD at rate a * b equals a
  FedAvg round of every user with one local step at rate a, uniform weights and server SGD at rate b."""
  ids = task.train_data.client_ids
  examples = task.train_examples(ids, 0, seed=0)
  central = centralized.SequenceCentralizedEngine(
      task, centralized.CentralizedConfig(optimizer='sgd', learning_rate=0.5 * 2.0, batch_size=len(ids)))
  engine = _engine(task, 5, client_learning_rate=0.5, local_epochs=1, server_learning_rate=2.0,
                   client_weighting='uniform')
  state = central.initialize()
  fed_state = engine.initialize()
  for a, b in zip(central.global_weights(state), engine.global_weights(fed_state), strict=True):
    np.testing.assert_array_equal(a, b)
  state = central.next(state, examples).state
  fed_state = engine.next(fed_state, examples).state
  for a, b in zip(central.global_weights(state), engine.global_weights(fed_state), strict=True):
    np.testing.assert_allclose(a, b, atol=2e-5)
  clients = task.eval_clients(schema.VAL)
  federated = engine.evaluate(fed_state, clients)
  for key, value in central.evaluate(state, clients).items():
    np.testing.assert_allclose(federated[key], value, rtol=1e-4, atol=1e-6, err_msg=key)

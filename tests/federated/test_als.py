"""Federated ALS rounds (the shard process) against numpy ALS: the exact user solve, the (clipped, noised) mean statistics, the item step."""

import shutil
import sqlite3

import numpy as np
import pytest

from tff_rec import tasks
from tff_rec.federated import aggregation, fed_recon, process
from tff_rec.federated import als as fed_als
from tff_rec.models import als, two_tower
from tff_rec.privacy import dp
from tff_rec.training_loop import flatten_metrics

CONFIG = als.AlsConfig(alpha=3.0, regularization=2.0)


def _task(tiny_dataset):
  return tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=3, init_stddev=0.5)


def _engine(task, config, clients, query=None, seed=0):
  """Federated ALS on the shard process (shards of 4 users), with `query`'s user-level DP if given."""
  factory = (lambda dense: aggregation.DPFactory(query, dense, seed)) if query else aggregation.MeanFactory
  return process.ShardEngine(task, fed_recon.ReconConfig(split_dataset=False), users_per_shard=4,
                             eval_learning_rate=1.0, eval_epochs=1, aggregation=factory, algorithm='fed_als',
                             als_config=config, clients=clients)


def _numpy_round(table, examples, clients, clip=None, features=None, mu=None):
  """One ALS round written out: users solved on the whole catalogue, statistics (clipped), mean, item solve
  (with `features`: to the fixed point of the prior's alternation, y_i = (G + lambda I)^-1 (s_i + lambda W^T f_i)
  and W = (F^T F + mu I)^-1 F^T Y)."""
  dim = table.shape[1]
  gram, sums = np.zeros((dim, dim)), np.zeros_like(table, dtype=np.float64)
  for items, labels in examples:
    rated = items[labels[:, 0] > 0.5] if labels.ndim == 2 else items[labels > 0.5]
    if not len(rated):
      continue
    p = np.zeros(len(table)); np.add.at(p, rated, 1.0)  # Counts: an item rated twice counts twice.
    x = np.linalg.solve(table.T @ table + CONFIG.alpha * (table[rated].T @ table[rated])
                        + CONFIG.regularization * np.eye(dim), (1 + CONFIG.alpha) * table[rated].sum(0))
    user_gram, user_sums = np.outer(x, x), np.zeros_like(sums)
    np.add.at(user_sums, rated, (1 + CONFIG.alpha) * x)
    scale = 1.0 if clip is None else min(1.0, clip / np.sqrt((user_gram ** 2).sum() + (user_sums ** 2).sum()))
    gram += scale * user_gram
    sums += scale * user_sums
  lam = CONFIG.regularization / clients
  inverse = np.linalg.inv(gram / clients + lam * np.eye(dim))
  new = sums / clients @ inverse
  if features is not None:
    for _ in range(5000):
      coefficients = np.linalg.solve(features.T @ features + mu * np.eye(features.shape[1]), features.T @ new)
      new = (sums / clients + lam * features @ coefficients) @ inverse
  new[0] = 0.0
  return new


def test_a_round_is_numpy_als(tiny_dataset):
  task = _task(tiny_dataset)
  ids = task.train_data.client_ids[:10]
  examples = task.train_examples(ids, 0, seed=0)
  engine = _engine(task, CONFIG, len(ids))
  state = engine.initialize()
  output = engine.next(state, examples)
  start, after = engine.global_weights(state), engine.global_weights(output.state)
  np.testing.assert_allclose(after[0], _numpy_round(start[0], examples, len(ids)), rtol=2e-3, atol=2e-4)
  np.testing.assert_array_equal(after[1], start[1])  # The bias stays 0.
  rows, dim = start[0].shape
  metrics = flatten_metrics(output.metrics)
  assert metrics['communication/upload_bytes_per_client'] == 4 * (dim * dim + rows * dim)
  assert metrics['client_work/train/num_examples'] == sum(len(e[0]) for e in examples)


def test_the_item_prior_centres_items_on_their_features(tiny_dataset):
  task = _task(tiny_dataset)
  ids = task.train_data.client_ids[:10]
  examples = task.train_examples(ids, 0, seed=0)
  config = als.AlsConfig(CONFIG.alpha, CONFIG.regularization, item_prior=True, prior_regularization=0.5)
  engine = _engine(task, config, len(ids))
  catalogue = two_tower.item_features(task.db_path, task.vocabulary)
  features = als.prior_features(catalogue.genres, catalogue.year_buckets, two_tower.NUM_YEAR_BUCKETS)
  np.testing.assert_array_equal(fed_als.item_prior(task, config), features)
  state = engine.initialize()
  start = engine.global_weights(state)[0]
  table = engine.global_weights(engine.next(state, examples).state)[0]
  np.testing.assert_allclose(table, _numpy_round(start, examples, len(ids), features=features, mu=0.5),
                             rtol=2e-3, atol=2e-4)
  assert not np.allclose(table, _numpy_round(start, examples, len(ids)), atol=1e-2)


def test_title_vectors_join_the_item_priors_features(tiny_dataset, tmp_path):
  with pytest.raises(ValueError, match='no title vector for 150 of 150 items'):
    tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset), item_text_features=True).catalogue_features()
  data = tmp_path / 'with_text'
  shutil.copytree(tiny_dataset, data)
  rng = np.random.default_rng(0)
  con = sqlite3.connect(data / 'clients.sqlite')  # What `prepare_data --item_text_encoder` writes.
  con.executemany('INSERT INTO item_text VALUES (?, ?)',
                  [(item, rng.normal(size=4).astype('<f4').tobytes())
                   for (item,) in con.execute('SELECT item_id FROM items').fetchall()])
  con.commit()
  con.close()
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=str(data), batch_size=8, num_negatives=2),
                                  embedding_dim=3, init_stddev=0.5, item_text_features=True)
  config = als.AlsConfig(CONFIG.alpha, CONFIG.regularization, item_prior=True, prior_regularization=0.5)
  plain = _task(tiny_dataset).catalogue_features()
  text = task.catalogue_features().text
  assert text.shape == (151, 4) and not text[0].any() and text[1:].all()
  expected = als.prior_features(np.concatenate([plain.genres, text], axis=1), plain.year_buckets,
                                two_tower.NUM_YEAR_BUCKETS)
  np.testing.assert_array_equal(fed_als.item_prior(task, config), expected)


def test_dp_clips_each_users_statistics_and_noise_is_seeded(tiny_dataset):
  task = _task(tiny_dataset)
  ids = task.train_data.client_ids[:10]
  examples = task.train_examples(ids, 0, seed=0)
  clip = 0.5
  engine = _engine(task, CONFIG, len(ids), dp.dp_query(dp.DPConfig(dp.GAUSSIAN_FIXED, 1e-9, clip), len(ids)))
  state = engine.initialize()
  start = engine.global_weights(state)[0]
  table = engine.global_weights(engine.next(state, examples).state)[0]
  unclipped = _numpy_round(start, examples, len(ids))
  np.testing.assert_allclose(table, _numpy_round(start, examples, len(ids), clip), rtol=2e-3, atol=2e-4)
  assert not np.allclose(table, unclipped, atol=1e-2)  # The clip bit here.
  noisy = _engine(task, CONFIG, len(ids), dp.dp_query(dp.DPConfig(dp.GAUSSIAN_FIXED, 1.0, clip), len(ids)), seed=3)
  state = noisy.initialize()
  first, again = noisy.next(state, examples).state, noisy.next(state, examples).state
  np.testing.assert_array_equal(noisy.global_weights(first)[0], noisy.global_weights(again)[0])
  assert not np.allclose(noisy.global_weights(first)[0], table, atol=1e-3)


def test_evaluation_reconstructs_users_exactly(tiny_dataset):
  task = _task(tiny_dataset)
  engine = _engine(task, CONFIG, 10)
  state = engine.initialize()
  for r in range(3):
    state = engine.next(state, task.train_examples(task.train_data.client_ids, r, seed=0)).state
  clients = task.eval_clients('test')
  table = engine.global_weights(state)[0].astype(np.float64)
  hits, losses = 0, []
  for (items, labels), (candidates, _) in zip(clients.support, clients.queries):
    y = np.asarray(labels).reshape(-1)
    rated = items[y > 0.5]
    x = np.linalg.solve(table.T @ table + CONFIG.alpha * table[rated].T @ table[rated]
                        + CONFIG.regularization * np.eye(3), (1 + CONFIG.alpha) * table[rated].sum(0))
    # The membership-inference signal: the user's mean ALS loss on its support examples.
    losses.append(np.mean((1 + CONFIG.alpha * y) * (y - table[items] @ x) ** 2))
    scores = table[candidates] @ x  # [queries, 100]: the held-out item first; ties count against it.
    hits += int(((scores[:, 1:] >= scores[:, :1]).sum(axis=1) < 10).sum())
  np.testing.assert_allclose(engine.client_losses(state, clients), losses, rtol=1e-3)
  totals = engine.evaluate(state, clients)
  # float32 in the engine, float64 here: a near-tie may fall either way.
  assert totals['count'] == len(clients.client_ids) and abs(totals['hits_at_10'] - hits) <= 1
  assert 0 < hits < len(clients.client_ids)  # Neither trivially all nor none.


def test_rating_objective_is_refused(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset), objective='rating', embedding_dim=3)
  with pytest.raises(ValueError, match='fed_als needs implicit feedback'):
    _engine(task, CONFIG, 10)

"""The shard process (a TFF client per shard of users) gives TFF's own `build_fed_recon` model and metrics."""

import collections
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests.privacy.test_data_flow import AGGREGATIONS, client_to_server_intrinsics
from tff_rec import preprocessing, tasks
from tff_rec.data import schema
from tff_rec.federated import aggregation, fed_avg, fed_recon, process, shard_math
from tff_rec.models import mf
from tff_rec.privacy import dp, secure
from tff_rec.training_loop import flatten_metrics

CONFIG = fed_recon.ReconConfig(server_optimizer='adam', server_learning_rate=0.05, client_learning_rate=0.5,
                               reconstruction_learning_rate=0.5, reconstruction_epochs=2, local_epochs=2,
                               split_dataset=False)


def _engine(task, users_per_shard, config=CONFIG, shard_examples=0):
  return process.ShardEngine(task, config, users_per_shard=users_per_shard, eval_learning_rate=0.5, eval_epochs=2,
                             shard_examples=shard_examples)


def _assert_weights_close(a, b, atol=5e-5):
  for x, y in zip(a, b, strict=True):
    np.testing.assert_allclose(x, y, atol=atol)


@pytest.fixture(scope='module', params=[mf.IMPLICIT, mf.RATING])
def task(request, tiny_dataset):
  return tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  objective=request.param, embedding_dim=4, l2=0.01)


@pytest.fixture(scope='module')
def reference(task):
  """TFF 0.87's `build_fed_recon` (kept as the test reference) and its federated evaluation."""
  return fed_recon.TffEngine(task, CONFIG, eval_learning_rate=0.5, eval_epochs=2)


def test_shard_size_one_matches_tff_build_fed_recon_over_rounds(task, reference):
  ours = _engine(task, 1)
  ref_state, state = reference.initialize(), ours.initialize()
  _assert_weights_close(reference.global_weights(ref_state), ours.global_weights(state), atol=0)  # Same initializers.
  ids = task.train_data.client_ids[:10]
  for round_num in range(2):
    examples = task.train_examples(ids, round_num, seed=0)
    ref_out, out = reference.next(ref_state, examples), ours.next(state, examples)
    ref_state, state = ref_out.state, out.state
    ref_flat, flat = flatten_metrics(ref_out.metrics), flatten_metrics(out.metrics)
    assert flat['client_work/train/loss'] == pytest.approx(ref_flat['client_work/train/loss'], rel=1e-5)
    for key in ('communication/download_bytes_per_client', 'communication/upload_bytes_per_client',
                'client_work/train/non_finite_clients', 'client_work/empty_clients'):
      assert flat[key] == ref_flat[key], key
    assert flat['client_work/train/num_examples'] == 2 * sum(len(x) for x, _ in examples)  # local_epochs 2.
  _assert_weights_close(reference.global_weights(ref_state), ours.global_weights(state))
  assert not np.allclose(ours.global_weights(state)[0], ours.global_weights(ours.initialize())[0])
  clients = task.eval_clients('test')
  ref_totals, totals = reference.evaluate(ref_state, clients), ours.evaluate(state, clients)
  # The in-process evaluator of the other engines' item sides (platforms, FedAvg, centralized), in chunks of 7 users.
  in_process = shard_math.ItemSideEvaluator(task.model_config, 8, learning_rate=0.5, epochs=2, users_per_chunk=7)
  local_totals = in_process.evaluate(ours.global_weights(state), clients)
  assert ref_totals.keys() == totals.keys() == local_totals.keys() and ref_totals['count'] > 0
  for key in ref_totals:
    assert totals[key] == pytest.approx(ref_totals[key], rel=1e-4, abs=1e-4), key
    assert local_totals[key] == pytest.approx(ref_totals[key], rel=1e-4, abs=1e-4), key


@pytest.mark.parametrize('weighting', ['num_examples', 'uniform'])
def test_any_shard_size_gives_the_shard_size_one_model(task, weighting):
  config = dataclasses.replace(CONFIG, client_weighting=weighting)
  # The last: shards of alike users by padded size, of uneven user counts.
  engines = [_engine(task, k, config) for k in (1, 3, 40)] + [_engine(task, 40, config, shard_examples=80)]
  states = [e.initialize() for e in engines]
  ids = task.train_data.client_ids[:10]
  for round_num in range(2):
    examples = task.train_examples(ids, round_num, seed=0)
    sizes = [len(part) for part in shard_math.size_shards(examples, 40, 80)]
    assert sum(sizes) == 10 and len(set(sizes)) > 1, sizes
    outs = [e.next(s, examples) for e, s in zip(engines, states)]
    states = [o.state for o in outs]
    losses = [flatten_metrics(o.metrics)['client_work/train/loss'] for o in outs]
    assert losses == pytest.approx([losses[0]] * 4, rel=1e-6)
  for engine, state in zip(engines[1:], states[1:]):
    # Adam divides by sqrt(v) + 1e-7: a near-zero gradient magnifies summation-order noise (as in the TFF test).
    _assert_weights_close(engines[0].global_weights(states[0]), engine.global_weights(state), atol=1e-5)
  clients = task.eval_clients('val')
  one = engines[0].evaluate(states[0], clients)
  for engine in engines[2:]:
    assert engine.evaluate(states[0], clients) == pytest.approx(one, rel=1e-5)


def test_clearing_tfs_kernel_cache_between_rounds_changes_nothing(tiny_dataset, monkeypatch):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  cleared = []
  clear = process.context.context().clear_kernel_cache
  monkeypatch.setattr(process.context.context(), 'clear_kernel_cache', lambda: cleared.append(1) or clear())
  weights = []
  for every in (1, 10**9):
    monkeypatch.setattr(process, '_CLEAR_KERNELS_EVERY', every)
    engine = _engine(task, 3)
    state = engine.initialize()
    for r in range(3):
      state = engine.next(state, task.train_examples(task.train_data.client_ids[:7], r, seed=0)).state
    weights.append(engine.global_weights(state))
  assert len(cleared) == 3  # After each round of the first engine, none of the second's.
  _assert_weights_close(weights[0], weights[1], atol=0)


def assert_weightings_are_means_of_users_own_updates(tiny_dataset, make_engine):
  """Server SGD at rate 1 applies the mean update: uniform = the plain mean of each user's own update, num_examples
  = their mean weighted by examples. `make_engine(task, config)`; returns (task, the config without a weighting)."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  examples = task.train_examples(task.train_data.client_ids[:4], 0, seed=0)
  sizes = np.array([len(items) for items, _ in examples], np.float64)
  assert len(set(sizes)) > 1  # Otherwise the two weightings coincide.
  base = fed_recon.ReconConfig('sgd', 1.0, 0.5, 0.5, reconstruction_epochs=2, split_dataset=False)
  for weighting, weights in (('uniform', np.ones_like(sizes)), ('num_examples', sizes)):
    engine = make_engine(task, dataclasses.replace(base, client_weighting=weighting))
    state = engine.initialize()
    start = engine.global_weights(state)[0]
    alone = np.stack([start - engine.global_weights(engine.next(state, [e]).state)[0] for e in examples])
    together = start - engine.global_weights(engine.next(state, examples).state)[0]
    np.testing.assert_allclose(together, np.tensordot(weights / weights.sum(), alone, axes=1), atol=1e-6)
  return task, base


def test_uniform_weighting_is_the_plain_mean_of_users_updates(tiny_dataset):
  """Whatever the shards (2 users a shard here)."""
  assert_weightings_are_means_of_users_own_updates(tiny_dataset, lambda task, config: _engine(task, 2, config))


def test_empty_and_non_finite_users_count_for_nothing_and_are_counted(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  engine = _engine(task, 2)
  examples = task.train_examples(task.train_data.client_ids[:4], 0, seed=0)
  empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
  items, labels = examples[1]
  poisoned = (items, np.full_like(labels, np.nan))  # NaN labels -> a NaN update.
  state = engine.initialize()
  clean = engine.next(state, examples)
  dirty = engine.next(state, examples[:2] + [empty, poisoned] + examples[2:])
  flat = flatten_metrics(dirty.metrics)
  assert flat['client_work/empty_clients'] == 1 and flat['client_work/train/non_finite_clients'] == 1
  assert flat['finalizer/update_non_finite'] == 0 and np.isfinite(flat['client_work/train/loss'])
  _assert_weights_close(engine.global_weights(dirty.state), engine.global_weights(clean.state), atol=1e-6)
  nothing = engine.next(state, [empty, empty, empty])  # 0 / 0: TFF's finalizer rejects the non-finite mean.
  assert flatten_metrics(nothing.metrics)['finalizer/update_non_finite'] == 1
  _assert_weights_close(engine.global_weights(nothing.state), engine.global_weights(state), atol=0)


def test_pack_shard_indexes_each_users_own_rows():
  examples = [(np.array([5, 3, 5, 9, 3]), np.arange(5, dtype=np.float32)), (np.array([2]), np.ones(1, np.float32))]
  shard = shard_math.pack_shard(examples, batch_size=2)
  # Each user's own rows, sorted (whatever the shard pads it to), then row 0 as padding; a padded example points at
  # position 0 and is masked.
  assert shard['rows'].tolist() == [[3, 5, 9], [2, 0, 0]]
  assert shard['local'][0].tolist() == [[1, 0], [1, 2], [0, 0]]
  assert shard['local'][1].tolist() == [[0, 0], [0, 0], [0, 0]]
  alone = shard_math.pack_shard(examples[1:], batch_size=2)
  assert alone['rows'].tolist() == [[2]] and alone['local'].tolist() == [[[0, 0]]]  # Batch 2, one example.
  assert shard['mask'][0].tolist() == [[1, 1], [1, 1], [1, 0]] and shard['mask'][1].sum() == 1
  np.testing.assert_array_equal(np.take_along_axis(shard['rows'], shard['local'].reshape(2, -1), 1)[0, :5],
                                examples[0][0])


def test_pack_batches_cuts_batches_like_dataset_batch():
  examples = [(np.arange(1, 6), np.ones(5, np.float32)), (np.zeros(0, np.int64), np.zeros(0, np.float32))]
  items, labels, mask = shard_math.pack_batches(examples, batch_size=2)
  assert items.shape == (2, 3, 2)
  assert items[0].tolist() == [[1, 2], [3, 4], [5, 0]] and mask[0].tolist() == [[1, 1], [1, 1], [1, 0]]
  assert mask[1].sum() == 0 and labels[0, 2].tolist() == [1.0, 0.0]


def test_shards_are_cut_evenly_and_by_size():
  assert shard_math.shard_sizes(10, 4) == [4, 3, 3] and shard_math.shard_sizes(3, 10) == [3]
  assert shard_math.shard_sizes(0, 5) == [0]
  examples = [(np.zeros(n), np.zeros(n)) for n in (5, 1, 3, 2)]
  assert [[len(x) for x, _ in s] for s in shard_math.by_size(examples, 2)] == [[1, 2], [3, 5]]
  with pytest.raises(ValueError, match='users_per_shard must be >= 1, got 0'):
    shard_math.shard_sizes(4, 0)


def test_shards_by_padded_size_fill_with_alike_users():
  examples = [(np.zeros(n), np.zeros(n)) for n in (8, 1, 20, 3, 5, 2, 8)]

  def sizes(users_per_shard, max_examples):
    return [[len(x) for x, _ in s] for s in shard_math.by_size(examples, users_per_shard, max_examples)]

  # A shard takes the next (larger) user while it has fewer than 3 and users x that user's size <= the budget.
  assert sizes(3, 12) == [[1, 2, 3], [5], [8], [8], [20]]
  assert sizes(3, 16) == [[1, 2, 3], [5, 8], [8], [20]]
  assert sizes(10, 24) == [[1, 2, 3, 5], [8, 8], [20]]
  assert sizes(2, 0) == [[1, 2], [3, 5], [8, 8], [20]]  # 0: by count alone.
  with pytest.raises(ValueError, match='max_examples must be >= 0, got -1'):
    shard_math.size_shards(examples, 3, -1)


def test_shard_sum_scatters_each_users_weighted_rows():
  # Two users, dim 1: user 0 rows [1, 2] deltas [1, 2]; user 1 rows [2, 0] deltas [10, 0]; weights 1 and 0.5.
  deltas = [np.array([[[1.0], [2.0]], [[10.0], [0.0]]], np.float32), np.array([3.0, 4.0], np.float32)]
  rows = np.array([[1, 2], [2, 0]])
  table, scalar = aggregation.shard_sum(deltas, [rows], [4], np.array([1.0, 0.5], np.float32))
  assert table.numpy().ravel().tolist() == [0.0, 1.0, 2.0 + 5.0, 0.0] and float(scalar) == 3.0 + 2.0


@pytest.mark.parametrize('aggregator', ['mean', 'dp', 'secure', 'compression'])  # Distributed DP: test_distributed.
def test_process_is_composed_from_tff_templates_and_sends_only_aggregates(task, aggregator):
  query = dp.dp_query(dp.DPConfig(dp.GAUSSIAN_ADAPTIVE, noise_multiplier=1.0, clip_norm=0.05), 100)
  factories = {'mean': aggregation.MeanFactory, 'dp': lambda dense: aggregation.DPFactory(query, dense, 0),
               'secure': lambda dense: aggregation.SecureMeanFactory(dense, 4),
               'compression': lambda dense: aggregation.CompressedMeanFactory(dense, 0, threshold=0)}
  engine = process.ShardEngine(task, CONFIG, users_per_shard=4, eval_learning_rate=0.5, eval_epochs=2,
                               aggregation=factories[aggregator])
  state = engine.initialize()
  assert isinstance(engine.process, tff.learning.templates.LearningProcess)
  assert state._fields == ('global_model_weights', 'distributor', 'client_work', 'aggregator', 'finalizer')
  for computation in (engine.process.next, engine.evaluation(), engine.evaluation(groups=3)):
    moved = client_to_server_intrinsics(computation)
    assert moved and set(moved) <= AGGREGATIONS, moved
  if aggregator == 'secure':  # The update crosses only through the secure sum; training metrics are plain sums.
    moved = client_to_server_intrinsics(engine.process.next)
    assert moved.count('federated_secure_sum_bitwidth') == 4 and moved.count('federated_sum') == 1, moved
  # No user parameter anywhere in the server state or in what a client sends: only item-side shapes.
  rows = task.model_config.num_items + 1
  update = engine.process.next.type_signature.parameter[0].member.global_model_weights.trainable
  shapes = [tuple(t.shape) for t in update]
  assert shapes[:2] == [(rows, 4), (rows, 1)] and all(s == () for s in shapes[2:])


def _dp_engine(task, users_per_shard, mechanism, *, noise=1.0, seed=0, config=CONFIG):
  query = dp.dp_query(dp.DPConfig(mechanism, noise_multiplier=noise, clip_norm=0.05), 100)
  return process.ShardEngine(task, config, users_per_shard=users_per_shard, eval_learning_rate=0.5, eval_epochs=1,
                             aggregation=lambda dense: aggregation.DPFactory(query, dense, seed))


def _roundtrip(state):
  """What a checkpoint keeps: the state's values as numpy, in its structure."""
  return tf.nest.map_structure(np.asarray, state)


@pytest.mark.parametrize('mechanism', ['gaussian_fixed', 'gaussian_adaptive'])
def test_dp_is_per_user_whatever_the_shards_and_its_noise_a_function_of_seed_and_round(tiny_dataset, mechanism):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  examples = [task.train_examples(task.train_data.client_ids[:12], r, seed=0) for r in range(2)]
  one, many = _dp_engine(task, 1, mechanism), _dp_engine(task, 5, mechanism)
  start = one.initialize()
  states = {}
  for name, engine in (('one', one), ('many', many)):
    state = engine.initialize()
    for r in range(2):
      out = engine.next(state, examples[r])
      state = out.state
    states[name] = state
    assert flatten_metrics(out.metrics)['aggregator/clip_norm'] > 0
  _assert_weights_close(one.global_weights(states['one']), many.global_weights(states['many']), atol=2e-6)
  # Resumed from round 1's state (as a checkpoint holds it) in a fresh process: round 2 draws the same noise.
  fresh = _dp_engine(task, 5, mechanism)
  after_one = _roundtrip(many.next(many.initialize(), examples[0]).state)
  resumed = fresh.next(after_one, examples[1]).state
  _assert_weights_close(many.global_weights(states['many']), fresh.global_weights(resumed), atol=0)
  # Another seed draws other noise.
  other = _dp_engine(task, 5, mechanism, seed=1)
  moved = other.next(other.initialize(), examples[0]).state
  assert not np.allclose(other.global_weights(moved)[0], many.global_weights(after_one)[0], atol=1e-4)
  assert not np.array_equal(many.global_weights(after_one)[0], many.global_weights(start)[0])


def test_platform_groups_are_shards_and_train_the_same_model(tiny_dataset):
  """Cross-silo DP: each platform's users one TFF client (`GroupedExamples`); per-user clipping makes the shards'
  make-up irrelevant, noise included."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  examples = task.train_examples(task.train_data.client_ids[:9], 0, seed=0)
  grouped = preprocessing.GroupedExamples(examples, [[0, 4, 8], [1, 2], [3, 5, 6, 7]])
  assert [len(s) for s in shard_math.by_size(grouped, 2)] == [3, 2, 4]  # The groups, whatever the shard size.
  engines = [_dp_engine(task, k, 'gaussian_fixed') for k in (2, 2)]
  states = [e.next(e.initialize(), x).state for e, x in zip(engines, (grouped, examples))]
  _assert_weights_close(engines[0].global_weights(states[0]), engines[1].global_weights(states[1]), atol=2e-6)


def test_dp_without_noise_is_the_sum_of_each_users_clipped_update_over_the_cohort(tiny_dataset):
  """Server SGD at rate 1 applies the DP mean: sum_u clip(delta_u) / 10, each user's delta computed alone."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  config = dataclasses.replace(CONFIG, server_optimizer='sgd', server_learning_rate=1.0, client_weighting='uniform')
  clip = 0.05
  query = dp.dp_query(dp.DPConfig(dp.GAUSSIAN_FIXED, noise_multiplier=1e-9, clip_norm=clip), 10)
  private = process.ShardEngine(task, config, users_per_shard=4, eval_learning_rate=0.5, eval_epochs=1,
                                aggregation=lambda dense: aggregation.DPFactory(query, dense, 0))
  plain = _engine(task, 1, config)
  examples = task.train_examples(task.train_data.client_ids[:6], 0, seed=0)
  state = plain.initialize()
  start = plain.global_weights(state)
  expected = [np.zeros_like(w) for w in start]
  for e in examples:  # Alone, the uniform mean is the user's own update.
    delta = [a - b for a, b in zip(start, plain.global_weights(plain.next(state, [e]).state))]
    scale = min(1.0, clip / np.sqrt(sum(np.sum(d.astype(np.float64) ** 2) for d in delta)))
    assert scale < 1.0  # The clip binds.
    expected = [x + scale * d / 10 for x, d in zip(expected, delta)]
  empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
  moved = [a - b for a, b in zip(start, private.global_weights(private.next(private.initialize(),
                                                                              examples + [empty]).state))]
  _assert_weights_close(moved, expected, atol=1e-7)


def _secure_engine(task, users_per_shard, config):
  return process.ShardEngine(task, config, users_per_shard=users_per_shard, eval_learning_rate=0.5, eval_epochs=1,
                             aggregation=lambda dense: aggregation.SecureMeanFactory(dense, users_per_shard))


def test_secure_aggregation_per_user_equals_tffs_secure_aggregator_one_client_per_user(tiny_dataset):
  """TFF's `secure_aggregator(zeroing=False, clipping=False, weighted=False)` over one TFF client per user."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  config = dataclasses.replace(CONFIG, server_optimizer='sgd', server_learning_rate=1.0, client_weighting='uniform')
  reference = fed_recon.TffEngine(task, config, aggregator=secure.secure_mean(), eval_learning_rate=0.5,
                                  eval_epochs=1)
  engines = [_secure_engine(task, k, config) for k in (1, 4)]
  empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
  ref_state, states = reference.initialize(), [e.initialize() for e in engines]
  for r in range(2):
    examples = task.train_examples(task.train_data.client_ids[:10], r, seed=0) + [empty]
    ref_out = reference.next(ref_state, examples)
    outs = [e.next(s, examples) for e, s in zip(engines, states)]
    ref_state, states = ref_out.state, [o.state for o in outs]
    expected = flatten_metrics(ref_out.metrics)
    for out in outs:
      got = flatten_metrics(out.metrics)
      for key in ('secure_upper_threshold', 'secure_lower_threshold', 'secure_upper_clipped_count'):
        assert got[f'aggregator/{key}'] == pytest.approx(expected[f'aggregator/mean_value/{key}'], rel=1e-6), key
  assert expected['aggregator/mean_value/secure_upper_threshold'] < secure.INITIAL_BOUND  # The bound adapted.
  for engine, state in zip(engines, states):
    _assert_weights_close(reference.global_weights(ref_state), engine.global_weights(state), atol=1e-7)


def test_secure_aggregation_bounds_each_user_before_its_shard_adds_them():
  """Bound 100: users at 150 and 30 average to (100 + 30) / 2, not min(180, 100) / 2; an empty user takes no part."""
  dense = [tf.TensorSpec([4, 2], tf.float32)]
  factory = aggregation.SecureMeanFactory(dense, users_per_shard=3)
  agg = factory.create(aggregation.user_updates_type(dense))

  def users(rows, deltas, examples):
    return collections.OrderedDict(rows=[np.array(rows, np.int64)], deltas=[np.array(deltas, np.float32)],
                                   weight=np.ones(len(rows), np.float32), examples=np.array(examples, np.float32),
                                   keys=np.arange(len(rows), dtype=np.int64))

  a = ([1, 0], [[150.0, 1.0], [0.0, 0.0]], 3)  # Row 0 is padding.
  b = ([1, 2], [[30.0, -2.0], [4.0, 0.0]], 5)
  empty = ([3, 0], [[500.0, 500.0], [0.0, 0.0]], 0)
  together = [users(*zip(a, b, empty))]
  apart = [users(*zip(a)), users(*zip(b, empty))]
  expected = np.zeros([4, 2], np.float32)
  expected[1], expected[2] = [65.0, -0.5], [2.0, 0.0]
  results = []
  for shards in (together, apart):
    state = agg.initialize()
    out = agg.next(state, shards)
    np.testing.assert_allclose(out.result[0], expected, atol=1e-6)
    assert out.measurements['secure_upper_clipped_count'] == 1 and out.measurements['secure_upper_threshold'] == 100
    # Half the users' largest value is under the estimate 50: it moves by exp(-(0.5 - 0.95)) (Andrew et al.).
    results.append(agg.next(out.state, shards).measurements['secure_upper_threshold'])
  assert results == pytest.approx([100 * np.exp(0.45)] * 2, rel=1e-5)


@pytest.fixture(scope='module', params=[mf.IMPLICIT, mf.RATING])
def global_users_task(request, tiny_dataset):
  """FedAvg's task: a global user table, examples as (user, item) pairs."""
  return tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  objective=request.param, embedding_dim=4, l2=0.01, user_table=tasks.GLOBAL)


def _tff_weights_by_layer(engine, state, task) -> dict[str, np.ndarray]:
  names = [v.name.split('/')[0] for v in task.model_fn().model.trainable_variables]
  return {n: np.asarray(w) for n, w in zip(names, engine.process.get_model_weights(state).trainable)}


def test_fed_avg_shards_equal_tffs_build_weighted_fed_avg_user_table_included(global_users_task):
  task = global_users_task
  reference = fed_avg.FedAvgEngine(task, fed_avg.FedAvgConfig('adam', 0.05, 0.5, local_epochs=2),
                                   eval_learning_rate=0.5, eval_epochs=1)
  config = dataclasses.replace(CONFIG, client_learning_rate=0.5)
  engines = [process.ShardEngine(task, config, users_per_shard=k, eval_learning_rate=0.5, eval_epochs=1,
                                 algorithm='fed_avg') for k in (1, 4)]
  ref_state, states = reference.initialize(), [e.initialize() for e in engines]
  for r in range(2):
    examples = task.train_examples(task.train_data.client_ids[:10], r, seed=0)
    ref_out = reference.next(ref_state, examples)
    outs = [e.next(s, examples) for e, s in zip(engines, states)]
    ref_state, states = ref_out.state, [o.state for o in outs]
    for out in outs:  # TFF's FedAvg loss: the example-weighted mean.
      assert flatten_metrics(out.metrics)['client_work/train/loss'] == pytest.approx(
          flatten_metrics(ref_out.metrics)['client_work/train/loss'], rel=1e-5)
  expected = _tff_weights_by_layer(reference, ref_state, task)
  for engine, state in zip(engines, states):
    _assert_weights_close(reference.global_weights(ref_state), engine.global_weights(state), atol=2e-5)
    users = engine.user_table(state)
    assert len(users) == (2 if task.objective == mf.RATING else 1) and np.abs(users[0]).max() > 0
    _assert_weights_close([expected[n] for n in ('user_embedding', 'user_bias')[:len(users)]], users, atol=2e-5)


def _dense_prox_steps(task, weights: dict[str, np.ndarray], examples, *, lr: float, mu: float, epochs: int):
  """One client's FedProx by hand on the dense Keras model: w <- w - lr (grad + mu (w - w0)) per batch."""
  model, loss_fn = task.model_fn().model, task.loss_fn()
  variables = {v.name.split('/')[0]: v for v in model.trainable_variables}
  for name, value in weights.items():
    variables[name].assign(value)
  start = {n: tf.constant(v) for n, v in weights.items()}
  for x, y in task.client_dataset(examples).repeat(epochs):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x))
    grads = tape.gradient(loss, list(variables.values()))
    for (name, v), g in zip(variables.items(), grads):
      v.assign(v - lr * (tf.convert_to_tensor(g) + mu * (v - start[name])))
  return {n: v.numpy() for n, v in variables.items()}


def test_fed_prox_takes_li_et_als_proximal_step_and_tff_087_the_opposite_one(tiny_dataset):
  """Server SGD at rate 1 and one user: the new model is that user's. Ours pulls towards the server model (mu);
  TFF 0.87's `build_weighted_fed_prox` adds mu (w0 - w) to the gradient, i.e. our steps with -mu."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01, user_table=tasks.GLOBAL)
  mu, config = 0.5, dataclasses.replace(CONFIG, server_optimizer='sgd', server_learning_rate=1.0,
                                        client_learning_rate=0.5)
  ours = [process.ShardEngine(task, config, users_per_shard=k, eval_learning_rate=0.5, eval_epochs=1,
                              algorithm='fed_prox', proximal_strength=mu) for k in (1, 3)]
  theirs = fed_avg.FedAvgEngine(task, fed_avg.FedAvgConfig('sgd', 1.0, 0.5, local_epochs=2, proximal_strength=mu),
                                eval_learning_rate=0.5, eval_epochs=1)
  user = task.train_examples(task.train_data.client_ids[:1], 0, seed=0)
  start = _tff_weights_by_layer(theirs, theirs.initialize(), task)
  assert len(user[0][0]) > 8  # Several batches: the proximal term acts from the second step on.
  for engine, sign in [(e, 1.0) for e in ours] + [(theirs, -1.0)]:
    expected = _dense_prox_steps(task, start, user[0], lr=0.5, mu=sign * mu, epochs=2)
    state = engine.next(engine.initialize(), user).state
    got = (_tff_weights_by_layer(engine, state, task) if engine is theirs else
           dict(zip([n for n in process.FEDAVG_LAYERS if n in start],
                    engine.user_table(state) + engine.global_weights(state), strict=True)))
    for name, value in expected.items():
      np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)
  no_prox = _dense_prox_steps(task, start, user[0], lr=0.5, mu=0.0, epochs=2)
  assert not np.allclose(no_prox['item_embedding'], expected['item_embedding'], atol=1e-4)  # mu matters here.


def test_compression_quantises_each_users_rows_unbiasedly_whatever_its_shard(tiny_dataset):
  """Server SGD at rate 1: the step is the example-weighted mean of users' decoded updates. Each user's weighted
  update is within one of its own quantisation steps of the exact one; untouched rows stay exactly zero; the
  rounding noise follows (seed, round, user), not the shard; over seeds the mean is the exact mean."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=160, l2=0.01)  # 151 x 160 > 20,000 values: the table is quantised.
  config = dataclasses.replace(CONFIG, server_optimizer='sgd', server_learning_rate=1.0)

  def engine(k, seed=None):
    factory = aggregation.MeanFactory if seed is None else (
        lambda dense: aggregation.CompressedMeanFactory(dense, seed))
    return process.ShardEngine(task, config, users_per_shard=k, eval_learning_rate=0.5, eval_epochs=1,
                               aggregation=factory)

  examples = task.train_examples(task.train_data.client_ids[:6], 0, seed=0)
  plain = engine(1)
  start = plain.global_weights(plain.initialize())

  def step(e):
    out = e.next(e.initialize(), examples)
    return [a - b for a, b in zip(start, e.global_weights(out.state))], flatten_metrics(out.metrics)

  exact, plain_metrics = step(plain)
  one, metrics = step(engine(1, seed=0))
  _assert_weights_close(one, step(engine(4, seed=0))[0], atol=1e-7)
  np.testing.assert_array_equal(one[1], exact[1])  # The biases (151 values) go as float32, not quantised.
  untouched = np.all(exact[0] == 0, axis=1)
  assert untouched.any() and not one[0][untouched].any()
  weights = np.array([2.0 * len(x) for x, _ in examples])  # num_examples weighting, local_epochs 2.
  users = engine(1)
  per_user = []
  for e in examples:  # Each user's own weighted update: its quantisation step bounds the error.
    out = users.next(users.initialize(), [e])
    per_user.append(start[0] - users.global_weights(out.state)[0])
  bound = sum(w * np.ptp(np.append(u, 0.0)) / 255 for w, u in zip(weights, per_user)) / weights.sum()
  error = np.abs(one[0] - exact[0]).max()
  assert 0 < error <= bound + 1e-7
  mean = np.mean([step(engine(1, seed=s))[0][0] for s in range(1, 9)] + [one[0]], axis=0)
  assert np.abs(mean - exact[0]).max() < error / 2  # Unbiased: averaging draws converges on the exact mean.
  assert metrics['communication/upload_bytes_per_client'] < 0.2 * plain_metrics['communication/upload_bytes_per_client']


def test_two_tower_shards_equal_tffs_two_tower_process_over_rounds(tiny_dataset):
  """The two-tower model (TFRS retrieval loss, the query tower reconstructed on the device): shard sizes 1 and 4
  against TFF's `build_fed_recon` of the Keras two-tower (weights, train loss, evaluation totals); only the
  candidate tower is in the server state or leaves a shard, and only as aggregates."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, model=tasks.TWO_TOWER)
  reference = fed_recon.TffEngine(task, CONFIG, eval_learning_rate=0.5, eval_epochs=2)
  engines = [_engine(task, k) for k in (1, 4)]
  ref_state, states = reference.initialize(), [e.initialize() for e in engines]
  _assert_weights_close(reference.global_weights(ref_state), engines[0].global_weights(states[0]), atol=0)
  for round_num in range(2):
    examples = task.train_examples(task.train_data.client_ids[:10], round_num, seed=0)
    ref_out, outs = reference.next(ref_state, examples), [e.next(s, examples) for e, s in zip(engines, states)]
    ref_state, states = ref_out.state, [o.state for o in outs]
    for out in outs:
      assert flatten_metrics(out.metrics)['client_work/train/loss'] == pytest.approx(
          flatten_metrics(ref_out.metrics)['client_work/train/loss'], rel=1e-5)
  clients = task.eval_clients('test')
  ref_totals = reference.evaluate(ref_state, clients)
  for engine, state in zip(engines, states):
    # 1e-4: the reference differentiates TFRS's loss with a tape, the shard process reconstructs the query with the
    # closed-form gradient (reconstruction.retrieval_score_gradients): float32 rounding apart, which Adam amplifies.
    _assert_weights_close(reference.global_weights(ref_state), engine.global_weights(state), atol=1e-4)
    totals = engine.evaluate(state, clients)
    assert totals.keys() == ref_totals.keys() and ref_totals['count'] > 0
    for key in ref_totals:
      assert totals[key] == pytest.approx(ref_totals[key], rel=1e-4, abs=1e-4), key
  assert not np.allclose(engines[0].global_weights(states[0])[0], engines[0].global_weights(engines[0].initialize())[0])
  moved = client_to_server_intrinsics(engines[0].process.next)
  assert moved and set(moved) <= AGGREGATIONS, moved
  trainable = engines[0].process.next.type_signature.parameter[0].member.global_model_weights.trainable
  assert [tuple(t.shape) for t in trainable] == [(task.model_config.num_items + 1, 4), (schema.NUM_GENRES, 4), (18, 4)]
  losses = engines[1].client_losses(states[1], clients)
  assert losses.shape == (len(clients.support),) and np.all(np.isfinite(losses)) and losses.max() > 0
  engines[1].users_per_shard = 1  # One user at a time (the audit computes a shard of alike users at once).
  np.testing.assert_allclose(engines[1].client_losses(states[1], clients), losses, rtol=1e-5)


@pytest.mark.parametrize('model, objective', [('mf', mf.RATING), (tasks.TWO_TOWER, mf.IMPLICIT)])
def test_split_dataset_reconstructs_on_even_batches_and_trains_on_odd_ones_as_tff(tiny_dataset, model, objective):
  """TFF's `split_dataset`: a user reconstructs on its even batches and trains the items on its odd ones; a user
  with one batch trains nothing (weight 0) and is not empty. Shard sizes 1 and 4 against TFF's process."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=4, num_negatives=2),
                                  embedding_dim=4, model=model, objective=objective,
                                  l2=0.01 if model == 'mf' else 0.0)
  config = dataclasses.replace(CONFIG, split_dataset=True)
  reference = fed_recon.TffEngine(task, config, eval_learning_rate=0.5, eval_epochs=2)
  engines = [_engine(task, k, config) for k in (1, 4)]
  ref_state, states = reference.initialize(), [e.initialize() for e in engines]
  for round_num in range(2):
    examples = task.train_examples(task.train_data.client_ids[:10], round_num, seed=0)
    examples[3] = (examples[3][0][:3], examples[3][1][:3])  # One batch: reconstruction only.
    ref_out, outs = reference.next(ref_state, examples), [e.next(s, examples) for e, s in zip(engines, states)]
    ref_state, states = ref_out.state, [o.state for o in outs]
    for out in outs:
      got = flatten_metrics(out.metrics)
      assert got['client_work/train/loss'] == pytest.approx(
          flatten_metrics(ref_out.metrics)['client_work/train/loss'], rel=1e-5)
      assert got['client_work/empty_clients'] == 0
      odd = sum(max(0, min(4, len(x) - 4 * t)) for x, _ in examples for t in range(1, len(x) // 4 + 1, 2))
      assert got['client_work/train/num_examples'] == 2 * odd  # The odd batches', local_epochs 2.
  for engine, state in zip(engines, states):
    # Two-tower 1e-5: its query by the closed-form gradient against TFF's tape (float32 rounding apart).
    _assert_weights_close(reference.global_weights(ref_state), engine.global_weights(state),
                          atol=5e-6 if model == 'mf' else 1e-5)
  assert not np.allclose(engines[0].global_weights(states[0])[0], engines[0].global_weights(engines[0].initialize())[0])

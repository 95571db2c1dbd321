"""The vectorised engine gives the model and metrics of TFF's own Fed Recon process."""

import dataclasses

import numpy as np
import tensorflow as tf
import pytest

from tests.federated.test_process import assert_weightings_are_means_of_users_own_updates
from tff_rec import tasks
from tff_rec.federated import fed_recon, vectorized
from tff_rec.models import mf
from tff_rec.training_loop import flatten_metrics

CONFIG = fed_recon.ReconConfig(server_optimizer='adam', server_learning_rate=0.05, client_learning_rate=0.5,
                               reconstruction_learning_rate=0.5, reconstruction_epochs=2, local_epochs=2,
                               split_dataset=False)


@pytest.fixture(scope='module', params=[mf.IMPLICIT, mf.RATING])
def engines(request, tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  objective=request.param, embedding_dim=4, l2=0.01)
  reference = fed_recon.TffEngine(task, CONFIG, eval_learning_rate=0.5, eval_epochs=2)
  fast = vectorized.VectorizedEngine(task, CONFIG, eval_learning_rate=0.5, eval_epochs=2)
  return task, reference, fast


def test_pad_examples_cuts_batches_like_dataset_batch():
  examples = [(np.arange(1, 6), np.ones(5, np.float32)), (np.zeros(0, np.int64), np.zeros(0, np.float32))]
  items, labels, mask = vectorized.pad_examples(examples, batch_size=2)
  assert items.shape == (2, 3, 2)
  assert items[0].tolist() == [[1, 2], [3, 4], [5, 0]] and mask[0].tolist() == [[1, 1], [1, 1], [1, 0]]
  assert mask[1].sum() == 0 and labels[0, 2].tolist() == [1.0, 0.0]


def test_rounds_match_the_tff_process(engines):
  task, reference, fast = engines
  ref_state, fast_state = reference.initialize(), fast.initialize()
  for a, b in zip(reference.global_weights(ref_state), fast.global_weights(fast_state)):
    np.testing.assert_array_equal(a, b)  # The same initializers.
  ids = task.train_data.client_ids[:10]
  for round_num in range(3):
    examples = task.train_examples(ids, round_num, seed=0)
    ref_out, fast_out = reference.next(ref_state, examples), fast.next(fast_state, examples)
    ref_state, fast_state = ref_out.state, fast_out.state
    assert float(fast_out.metrics['client_work']['train']['loss']) == pytest.approx(
        float(ref_out.metrics['client_work']['train']['loss']), rel=1e-5)
    fast_flat = flatten_metrics(fast_out.metrics)
    for key in ('communication/download_bytes_per_client', 'communication/upload_bytes_per_client'):
      assert fast_flat[key] == flatten_metrics(ref_out.metrics)[key]  # Vectorized: from arrays; TFF: from types.
    rows = task.model_config.num_items + 1  # float32 item table (dim 4) and biases, plus mu for ratings.
    expected = 4 * (rows * 4 + rows + (1 if task.objective == mf.RATING else 0))
    assert fast_flat['communication/download_bytes_per_client'] == expected
  for a, b in zip(reference.global_weights(ref_state), fast.global_weights(fast_state)):
    np.testing.assert_allclose(a, b, atol=5e-5)
  assert not np.allclose(fast.global_weights(fast_state)[0], fast.global_weights(fast.initialize())[0])


def test_evaluation_matches_the_tff_evaluation(engines):
  task, reference, fast = engines
  ref_state, fast_state = reference.initialize(), fast.initialize()
  examples = task.train_examples(task.train_data.client_ids[:10], 0, seed=0)
  ref_state, fast_state = reference.next(ref_state, examples).state, fast.next(fast_state, examples).state
  clients = task.eval_clients('test')
  ref_totals, fast_totals = reference.evaluate(ref_state, clients), fast.evaluate(fast_state, clients)
  assert ref_totals.keys() == fast_totals.keys() and ref_totals['count'] > 0
  for key in ref_totals:
    assert fast_totals[key] == pytest.approx(ref_totals[key], rel=1e-4, abs=1e-4), key


def test_empty_client_is_skipped_and_counted(engines):
  task, reference, fast = engines
  ids = task.train_data.client_ids[:4]
  examples = task.train_examples(ids, 0, seed=0)
  empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
  for engine in (reference, fast):
    state = engine.initialize()
    with_empty = engine.next(state, examples[:2] + [empty] + examples[2:])
    without = engine.next(state, examples)
    flat = flatten_metrics(with_empty.metrics)
    assert flat['client_work/empty_clients'] == 1
    for a, b in zip(engine.global_weights(with_empty.state), engine.global_weights(without.state)):
      np.testing.assert_allclose(a, b, atol=1e-6)
    # A cohort of nobody with data leaves the model as it was.
    nothing = engine.next(state, [empty, empty])
    for a, b in zip(engine.global_weights(nothing.state), engine.global_weights(state)):
      np.testing.assert_array_equal(a, b)


def test_non_finite_client_update_is_zeroed_and_counted(engines):
  task, reference, fast = engines
  ids = task.train_data.client_ids[:4]
  examples = task.train_examples(ids, 0, seed=0)
  items, labels = examples[1]
  poisoned = examples[:1] + [(items, np.full_like(labels, np.nan))] + examples[1:]  # NaN labels -> NaN update.
  for engine in (fast, reference):
    state = engine.initialize()
    out = engine.next(state, poisoned)
    flat = flatten_metrics(out.metrics)
    assert flat['client_work/train/non_finite_clients'] == 1 and flat['finalizer/update_non_finite'] == 0
    clean = engine.next(state, examples)
    assert flatten_metrics(clean.metrics)['client_work/train/non_finite_clients'] == 0
    for a, b in zip(engine.global_weights(out.state), engine.global_weights(clean.state)):
      np.testing.assert_allclose(a, b, atol=1e-6)  # The poisoned client counted for nothing.
      assert np.isfinite(a).all()


def test_client_weighting_uniform_is_the_plain_mean_of_client_updates(tiny_dataset):
  """Uniform = the plain mean of each client's own update, num_examples = their mean weighted by examples; and the
  vectorized engine's uniform mean is TFF's UNIFORM."""
  task, base = assert_weightings_are_means_of_users_own_updates(
      tiny_dataset, lambda task, config: vectorized.VectorizedEngine(task, config, eval_learning_rate=0.5,
                                                                     eval_epochs=2))
  reference = fed_recon.TffEngine(task, config := dataclasses.replace(base, client_weighting='uniform'),
                                  eval_learning_rate=0.5, eval_epochs=2)
  fast = vectorized.VectorizedEngine(task, config, eval_learning_rate=0.5, eval_epochs=2)
  ref_state, fast_state = reference.initialize(), fast.initialize()
  for round_num in range(2):
    examples = task.train_examples(task.train_data.client_ids[:10], round_num, seed=0)
    ref_state, fast_state = reference.next(ref_state, examples).state, fast.next(fast_state, examples).state
  for a, b in zip(reference.global_weights(ref_state), fast.global_weights(fast_state)):
    np.testing.assert_allclose(a, b, atol=5e-5)
  with pytest.raises(ValueError, match="--client_weighting must be one of .*got 'clients'"):
    dataclasses.replace(base, client_weighting='clients').validate()


def test_split_dataset_is_refused(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset))
  config = fed_recon.ReconConfig(split_dataset=True)
  with pytest.raises(ValueError, match='--engine=tff'):
    vectorized.VectorizedEngine(task, config, eval_learning_rate=0.1, eval_epochs=1)



@pytest.mark.parametrize('mechanism', ['gaussian_fixed', 'gaussian_adaptive'])
def test_dp_noise_is_a_function_of_seed_and_round(tiny_dataset, mechanism):
  """The same (seed, round) draws the same noise in any order and process; another seed draws other noise."""
  from tff_rec.privacy import dp  # pylint: disable=g-import-not-at-top
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)
  query = lambda: dp.dp_query(dp.DPConfig(mechanism, noise_multiplier=1.0, clip_norm=0.1), 100)
  engine = lambda seed: vectorized.VectorizedEngine(task, CONFIG, eval_learning_rate=0.5, eval_epochs=1,
                                                    dp_query=query(), seed=seed)
  examples = task.train_examples(task.train_data.client_ids[:5], 0, seed=0)
  first, other_seed = engine(0), engine(1)
  start = first.initialize()
  a = first.next(start, examples).state
  first.next(a, examples)  # Another round in between ...
  b = engine(0).next(start, examples).state  # ... and a fresh engine: round 1 again.
  for x, y in zip(a['weights'] + tuple(a['dp']), b['weights'] + tuple(b['dp'])):
    np.testing.assert_array_equal(x, y)
  c = other_seed.next(start, examples).state
  assert not np.array_equal(a['weights'][0], c['weights'][0])

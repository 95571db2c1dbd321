"""Federated Reconstruction process and federated evaluation."""

import collections

import pytest
import tensorflow_federated as tff

from tff_rec import tasks
from tff_rec.evaluation import client_eval
from tff_rec.federated import fed_recon
from tff_rec.models import mf


@pytest.fixture(scope='module', params=[mf.IMPLICIT, mf.RATING])
def setup(request, tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8), objective=request.param,
                                  embedding_dim=4)
  config = fed_recon.ReconConfig(server_optimizer='sgd', server_learning_rate=1.0, client_learning_rate=0.5,
                                 reconstruction_learning_rate=0.5)
  process = fed_recon.build_training_process(task.model_fn, task.loss_fn, config)
  return task, config, process


def test_round_keeps_user_parameters_on_clients(setup):
  task, _, process = setup
  # The server state holds only global (item-side) weights: no user embedding.
  weights = process.get_model_weights.type_signature.result
  shapes = [t.shape for t in tff.types.structure_from_tensor_type_tree(lambda t: t, weights.trainable)]
  expected = [(task.model_config.num_items + 1, 4), (task.model_config.num_items + 1, 1)]
  if task.objective == mf.RATING:
    expected.append(())
  assert [tuple(s) for s in shapes] == expected


def test_training_reduces_loss(setup):
  task, _, process = setup
  state = process.initialize()
  ids = task.train_data.client_ids[:10]
  losses = []
  for r in range(4):
    output = process.next(state, task.train_datasets(ids, r, seed=0))
    state = output.state
    losses.append(float(output.metrics['client_work']['train']['loss']))
  assert losses[-1] < losses[0]


def test_federated_evaluation_equals_centralized(setup):
  task, config, process = setup
  state = process.initialize()
  state = process.next(state, task.train_datasets(task.train_data.client_ids[:10], 0, seed=0)).state
  weights = process.get_model_weights(state)
  evaluation = fed_recon.build_evaluation(task.model_fn, task.loss_fn, process.get_model_weights.type_signature.result,
                                          task.eval_kind, num_items=task.model_config.num_items,
                                          learning_rate=config.reconstruction_learning_rate, epochs=2)
  data = task.eval_datasets(task.eval_clients('test'))[:12]  # Twelve users: each is rebuilt and run eagerly below.
  federated = client_eval.finalize(fed_recon.as_numpy(evaluation(weights, data)), task.eval_kind)

  # Centralized: the same client maths run eagerly, one user after another, summed here.
  totals = collections.defaultdict(float)
  for client in data:
    bundle = task.model_fn()
    global_weights = tff.learning.models.ReconstructionModel.get_global_variables(
        fed_recon.reconstruction_model(bundle))
    for variable, value in zip(global_weights.trainable, weights.trainable):
      variable.assign(value)
    sums = client_eval.evaluate_client(bundle, client, task.eval_kind, task.loss_fn(),
                                       num_items=task.model_config.num_items,
                                       learning_rate=config.reconstruction_learning_rate, epochs=2)
    for key, value in sums.items():
      totals[key] += float(value)
  centralized = client_eval.finalize(totals, task.eval_kind)
  assert federated.keys() == centralized.keys()
  assert {'recall@20', 'catalogue_ndcg@20'} <= federated.keys()
  for key in federated:
    assert federated[key] == pytest.approx(centralized[key], abs=1e-6), key
  assert federated['count'] > 0

"""FedAvg / FedProx baselines and cross-silo Fed Recon: what the server holds, and that they learn."""

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_rec import tasks
from tff_rec.federated import fed_avg, fed_recon


def _shapes(engine):
  weights = engine.process.get_model_weights.type_signature.result.trainable
  return [tuple(t.shape) for t in tff.types.structure_from_tensor_type_tree(lambda t: t, weights)]


@pytest.mark.parametrize('proximal_strength', [0.0, 0.1])
def test_fed_avg_ships_the_user_table_and_learns(tiny_dataset, proximal_strength):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8), embedding_dim=4,
                                  user_table=tasks.GLOBAL)
  engine = fed_avg.FedAvgEngine(task, fed_avg.FedAvgConfig('adam', 0.05, 0.5, 1, proximal_strength),
                                eval_learning_rate=0.5, eval_epochs=1)
  num_users = len(task.user_vocabulary) + 1
  assert (num_users, 4) in _shapes(engine)  # The baseline's cost: every user's row is server state.
  state = engine.initialize()
  ids = task.train_data.client_ids[:10]
  losses = []
  for r in range(4):
    output = engine.next(state, task.train_examples(ids, r, seed=0))
    state = output.state
    losses.append(float(output.metrics['client_work']['train']['loss']))
  assert losses[-1] < losses[0]
  items = engine.global_weights(state)
  assert [w.shape for w in items] == [(task.model_config.num_items + 1, 4), (task.model_config.num_items + 1, 1)]


def test_cross_silo_fed_recon_keeps_user_tables_on_platforms(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, view='cross_silo', batch_size=8),
                                  embedding_dim=4, user_table=tasks.LOCAL)
  engine = fed_recon.TffEngine(task, fed_recon.ReconConfig(split_dataset=False), eval_learning_rate=0.5,
                               eval_epochs=1)
  assert _shapes(engine) == [(task.model_config.num_items + 1, 4), (task.model_config.num_items + 1, 1)]
  examples = task.train_examples(task.train_data.client_ids, 0, seed=0)
  users, _ = np.unique(examples[0][0][:, 0], return_counts=True)
  assert len(task.train_data.client_ids) == 3 and len(users) > 1  # A platform client holds many users.
  totals = engine.evaluate(engine.next(engine.initialize(), examples).state, task.eval_clients('val'))
  assert totals['count'] == len(task.eval_clients('val').client_ids)  # Evaluated per user.


def test_cross_silo_without_a_user_table_is_refused(tiny_dataset):
  with pytest.raises(ValueError, match='needs a user table'):
    tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, view='cross_silo'))

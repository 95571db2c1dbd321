"""What the serving tests share: a tiny exported model, and short training runs of each model kind."""

import dataclasses

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import train_federated
from tff_rec import tasks
from tff_rec.models import mf
from tff_rec.serving import export

FLAGS = flags.FLAGS
# Embedding dimension 16: TFLite quantises only weights of over 1,024 values (151 items x 16).
TRAINING = dict(rounds=2, clients_per_round=5, batch_size=8, num_negatives=3, embedding_dim=16, eval_every=2,
                checkpoint_every=2, eval_reconstruction_epochs=2, reconstruction_learning_rate=0.5, l2=0.01,
                progress=False, seed=3, eval_recent_items=2, eval_recent_repeats=2, group_metrics='none')
# fed_als first: tests that need one model ask for it by `indirect` parametrization, and pytest reuses a session
# fixture's instance for them only when the param's index matches too (0 in both lists).
MODELS = dict(fed_als=dict(objective=mf.IMPLICIT, algorithm='fed_als', als_alpha=3.0, als_regularization=2.0),
              mf_implicit=dict(objective=mf.IMPLICIT), mf_rating=dict(objective=mf.RATING),
              two_tower=dict(objective=mf.IMPLICIT, model='two_tower'))


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  task: tasks.RecommendationTask
  run_dir: str
  export_dir: str  # The SavedModel exported at the end of training (top 5).
  final: dict
  data_dir: str

VOCABULARY = [f'item{i}' for i in range(1, 21)]


@pytest.fixture(scope='session')
def tiny_export(tmp_path_factory) -> str:
  """An implicit MF model over VOCABULARY (top 3) exported as version 3 of a base path; returns the version's
  directory (its parent is the base path)."""
  rng = np.random.default_rng(0)
  weights = [rng.normal(size=(21, 4)).astype(np.float32), rng.normal(size=(21, 1)).astype(np.float32)]
  config = export.ServingConfig(mf.IMPLICIT, l2=0.01, batch_size=4, num_negatives=2, learning_rate=0.5, epochs=2,
                                seed=0)
  path = str(tmp_path_factory.mktemp('served') / 'rec' / '3')
  export.save(export.Recommender(config, VOCABULARY, weights, top_k=3), path, {'test': True})
  return path


@pytest.fixture(scope='session', params=list(MODELS))
def trained_run(request, tiny_dataset, tmp_path_factory) -> TrainedRun:
  """A 2-round run of each model kind on tiny data, exported at the end of training."""
  out = tmp_path_factory.mktemp(f'trained_{request.param}')
  if not FLAGS.is_parsed():
    FLAGS(['train_federated', '--experiment_name=unset'])
  with flagsaver.flagsaver(data_dir=tiny_dataset, root_output_dir=str(out), experiment_name='run',
                           export_dir=str(out / 'model'), top_k=5, **MODELS[request.param], **TRAINING):
    config = train_federated.config_from_flags()
    task = train_federated.build_task(config)
    final = train_federated.run(config, task)
  return TrainedRun(task, str(out / 'run'), str(out / 'model'), final, tiny_dataset)

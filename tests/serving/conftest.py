"""What the serving tests share: a tiny exported model, short training runs of each model kind, a REST server."""

import contextlib
import dataclasses
import threading

import numpy as np
import pytest
import waitress
from waitress import wasyncore
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


@contextlib.contextmanager
def waitress_server(app):
  """`app` served by waitress on a free loopback port in a thread; yields the port.

  Closed from the server's own loop thread (waitress' trigger runs the close
  there; every socket of its map, as waitress' own multi-socket server closes):
  closing them from this thread while its loop waits on them in select()
  raised EBADF in that thread.
  """
  server = waitress.create_server(app, host='127.0.0.1', port=0, threads=2)
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  try:
    yield server.effective_port
  finally:
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # pylint: disable=protected-access
    thread.join(timeout=10)
    server.task_dispatcher.shutdown()


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

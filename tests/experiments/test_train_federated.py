"""train_federated end to end on tiny data: outputs, resume, determinism, bad flags."""

import csv
import json
import os

import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import train_federated
from tff_rec import training_loop

FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def parsed_flags():
  if not FLAGS.is_parsed():
    FLAGS(['train_federated', '--experiment_name=unset'])


def _run(tiny_dataset, out, name, **overrides):
  settings = dict(data_dir=tiny_dataset, root_output_dir=str(out), experiment_name=name, rounds=2,
                  clients_per_round=3, batch_size=8, embedding_dim=4, eval_every=1, checkpoint_every=1,
                  eval_reconstruction_epochs=1, progress=False)
  settings.update(overrides)
  with flagsaver.flagsaver(**settings):
    config = train_federated.config_from_flags()
    return train_federated.run(config, train_federated.build_task(config))


@pytest.mark.slow
@pytest.mark.parametrize('overrides', [
    {'engine': 'vectorized'},
    {'engine': 'tff'},
    {'view': 'cross_silo', 'clients_per_round': 2},  # Fed Recon with per-platform user tables (TFF engine).
    {'algorithm': 'fed_avg', 'server_optimizer': 'yogi', 'server_learning_rate': 0.01},
    {'algorithm': 'fed_prox', 'view': 'cross_silo', 'clients_per_round': 2},
    {'model': 'two_tower'},
], ids=['vectorized', 'tff', 'cross_silo', 'fed_avg', 'fed_prox_cross_silo', 'two_tower'])
def test_two_rounds_write_every_output(tiny_dataset, tmp_path, overrides):
  final = _run(tiny_dataset, tmp_path, 'smoke', **overrides)
  run_dir = tmp_path / 'smoke'
  assert sorted(os.listdir(run_dir)) == ['checkpoints', 'final_metrics.json', 'hparams.json', 'learning_curve.png',
                                         'metrics.csv', 'tensorboard']
  written = json.loads((run_dir / 'final_metrics.json').read_text())
  for key in ('rmse', 'mae', 'hr@10', 'ndcg@10', 'recall@20', 'rounds', 'wall_seconds'):
    assert key in written
  assert written['rounds'] == 2 and 0.0 <= written['hr@10'] <= 1.0 and written == pytest.approx(final)
  rows = list(csv.DictReader(open(run_dir / 'metrics.csv')))
  assert [r['key'] for r in rows] == ['1', '2'] and 'val/hr@10' in rows[0]
  assert json.loads((run_dir / 'hparams.json').read_text())['loop']['rounds'] == 2


@pytest.mark.slow
def test_resume_reaches_the_same_metrics_and_same_seed_same_metrics(tiny_dataset, tmp_path):
  straight = _run(tiny_dataset, tmp_path, 'straight', rounds=3)
  _run(tiny_dataset, tmp_path, 'resumed', rounds=2)  # "Killed" after round 2 ...
  resumed = _run(tiny_dataset, tmp_path, 'resumed', rounds=3)  # ... and started again.
  for metrics in (straight, resumed):
    metrics.pop('wall_seconds')
  assert resumed == straight
  rows = list(csv.DictReader(open(tmp_path / 'resumed' / 'metrics.csv')))
  assert [r['key'] for r in rows] == ['1', '2', '3']
  # The plotted history spans both invocations.
  assert [h['round'] for h in training_loop.read_history(str(tmp_path / 'resumed'))] == [1.0, 2.0, 3.0]
  again = _run(tiny_dataset, tmp_path, 'again', rounds=3)
  again.pop('wall_seconds')
  assert again == straight


@pytest.mark.parametrize('overrides, message', [
    ({'view': 'cross_silo', 'engine': 'vectorized'}, '--engine=vectorized runs MF Federated Reconstruction'),
    ({'algorithm': 'fed_prox', 'proximal_strength': 0.0}, 'needs --proximal_strength > 0'),
    ({'model': 'two_tower', 'objective': 'rating'}, '--model=two_tower trains with'),
    ({'model': 'two_tower', 'engine': 'vectorized'}, '--engine=vectorized runs MF'),
    ({'clients_per_round': 0}, 'set exactly one of --clients_per_round'),
    ({'clients_per_round': 1000}, 'exceeds the 36 training clients'),
    ({'client_learning_rate': 0.0}, 'client_learning_rate must be > 0'),
    ({'split_dataset': True, 'engine': 'vectorized'}, '--engine=vectorized runs MF Federated Reconstruction'),
    ({'data_dir': '/nonexistent'}, 'does not exist; prepare it'),
])
def test_bad_flags_fail_before_training(tiny_dataset, tmp_path, overrides, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    _run(tiny_dataset, tmp_path, 'bad', **overrides)
  assert not os.path.exists(tmp_path / 'bad' / 'metrics.csv')

"""train_centralized end to end on tiny data."""

import json
import os

import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import train_centralized
from tff_rec import training_loop

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


def _run(tiny_dataset, out, name, **overrides):
  settings = dict(data_dir=tiny_dataset, root_output_dir=str(out), experiment_name=name, epochs=2, batch_size=8,
                  central_batch_size=16, embedding_dim=4, eval_every=1, checkpoint_every=1,
                  eval_reconstruction_epochs=1, progress=False, group_metrics='none')
  settings.update(overrides)
  with flagsaver.flagsaver(**settings):
    config = train_centralized.config_from_flags()
    return train_centralized.run(config, train_centralized.build_task(config))


@pytest.mark.slow
def test_two_epochs_write_every_output_and_learn(tiny_dataset, tmp_path):
  final = _run(tiny_dataset, tmp_path, 'smoke', epochs=4)
  run_dir = tmp_path / 'smoke'
  assert sorted(os.listdir(run_dir)) == ['checkpoints', 'final_metrics.json', 'hparams.json', 'learning_curve.png',
                                         'metrics.csv', 'model_state.npz', 'tensorboard']
  written = json.loads((run_dir / 'final_metrics.json').read_text())
  assert written == pytest.approx(final) and written['rounds'] == 4 and written['recall@20'] is not None
  losses = [row['train/loss'] for row in training_loop.read_history(str(run_dir))]
  assert len(losses) == 4 and losses[-1] < losses[0]


@pytest.mark.slow
def test_the_sequence_model_trains_centrally(tiny_dataset, tmp_path):
  final = _run(tiny_dataset, tmp_path, 'sequence', epochs=3, model='sequence_two_tower', max_history=5,
               central_batch_size=8, learning_rate=0.05)
  run_dir = tmp_path / 'sequence'
  assert 'model_state.npz' in os.listdir(run_dir)  # What export reads.
  assert 0.0 <= final['hr@10'] <= 1.0 and final['rounds'] == 3
  losses = [row['train/loss'] for row in training_loop.read_history(str(run_dir))]
  assert losses[-1] < losses[0]


@pytest.mark.parametrize('overrides, message', [
    ({'model': 'two_tower'}, 'trains --model=mf or sequence_two_tower'),
    ({'view': 'cross_silo'}, '--view must be cross_device'),
    ({'learning_rate': -1.0}, 'learning_rate'),
    ({'optimizer': 'nope'}, 'nope'),
])
def test_bad_flags_fail_before_training(tiny_dataset, tmp_path, overrides, message):
  with pytest.raises((ValueError, flags.IllegalFlagValueError), match=message):
    _run(tiny_dataset, tmp_path, 'bad', **overrides)
  assert not os.path.exists(tmp_path / 'bad' / 'metrics.csv')

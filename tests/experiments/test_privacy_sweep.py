"""privacy_sweep on tiny data: one run per epsilon, a CSV and a PNG."""

import csv
import math
import os

import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import privacy_sweep

FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def parsed_flags():
  if not FLAGS.is_parsed():
    FLAGS(['privacy_sweep', '--experiment_name=unset'])


@pytest.mark.slow
def test_sweep_writes_one_row_per_epsilon(tiny_dataset, tmp_path):
  settings = dict(data_dir=tiny_dataset, root_output_dir=str(tmp_path), experiment_name='sweep', rounds=2,
                  clients_per_round=0, client_sampling_rate=0.5, batch_size=8, embedding_dim=4, eval_every=2,
                  checkpoint_every=2, eval_reconstruction_epochs=1, progress=False, dp='gaussian_fixed',
                  clip_norm=0.1, epsilons=['inf', '8'])  # (Calibration's monotonicity: tests/privacy/test_dp.py.)
  with flagsaver.flagsaver(**settings):
    assert privacy_sweep.main(['privacy_sweep']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'sweep' / 'sweep.csv')))
  assert [float(r['epsilon']) for r in rows] == [8.0, math.inf]  # Sorted, whatever the flag's order.
  assert float(rows[0]['noise_multiplier']) > 0 and float(rows[1]['noise_multiplier']) == 0
  assert float(rows[0]['epsilon_spent']) == pytest.approx(8.0, rel=1e-2) and rows[1]['epsilon_spent'] == ''
  assert all(0 <= float(r['mia/auc']) <= 1 for r in rows)
  assert os.path.getsize(tmp_path / 'sweep' / 'sweep.png') > 0
  assert sorted(os.listdir(tmp_path / 'sweep')) == ['eps_8', 'eps_inf', 'sweep.csv', 'sweep.png']


def test_bad_epsilons_are_refused():
  with pytest.raises(ValueError, match='--epsilons must be'):
    privacy_sweep.parse_epsilons(['1', 'lots'])
  with pytest.raises(ValueError, match='must be > 0'):
    privacy_sweep.parse_epsilons(['0'])

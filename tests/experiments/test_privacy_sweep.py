"""privacy_sweep on tiny data: one run per epsilon, a CSV and a PNG."""

import csv
import math
import os

import pytest
from absl.testing import flagsaver

from experiments import privacy_sweep

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


@pytest.mark.slow
def test_sweep_writes_one_row_per_epsilon(tiny_dataset, tmp_path):
  settings = dict(data_dir=tiny_dataset, root_output_dir=str(tmp_path), experiment_name='sweep', rounds=2,
                  clients_per_round=0, client_sampling_rate=0.5, batch_size=8, embedding_dim=4, eval_every=2,
                  checkpoint_every=2, eval_reconstruction_epochs=1, progress=False, dp='gaussian_fixed',
                  clip_norm=0.1, epsilons=['inf', '8'],  # (Calibration's monotonicity: tests/privacy/test_dp.py.)
                  group_metrics='activity,platform')  # Two attributes: a panel each in the plot.
  with flagsaver.flagsaver(**settings):
    assert privacy_sweep.main(['privacy_sweep']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'sweep' / 'sweep.csv')))
  assert [float(r['epsilon']) for r in rows] == [8.0, math.inf]  # Sorted, whatever the flag's order.
  assert float(rows[0]['noise_multiplier']) > 0 and float(rows[1]['noise_multiplier']) == 0
  assert float(rows[0]['epsilon_spent']) == pytest.approx(8.0, rel=1e-2) and rows[1]['epsilon_spent'] == ''
  assert all(0 <= float(r['mia/auc']) <= 1 for r in rows)
  assert os.path.getsize(tmp_path / 'sweep' / 'sweep.png') > 0
  assert sorted(os.listdir(tmp_path / 'sweep')) == ['eps_8', 'eps_inf', 'sweep.csv', 'sweep.png',
                                                    'sweep_groups.csv']
  # Who pays: every group of every run, its loss against the run without DP.
  groups = list(csv.DictReader(open(tmp_path / 'sweep' / 'sweep_groups.csv')))
  assert {r['attribute'] for r in groups} == {'activity', 'platform'}
  for r in groups:
    if r['value'] and r['no_dp']:
      assert float(r['loss']) == pytest.approx(float(r['no_dp']) - float(r['value']))
      assert float(r['epsilon']) != math.inf or float(r['loss']) == 0.0


def test_group_losses_are_against_the_run_without_dp():
  rows = [{'epsilon': 8.0, 'by_gender/F/hr@10': 0.5, 'by_gender/F/users': 12.0, 'by_gender/M/users': 3.0,
           'hr@10': 0.55},
          {'epsilon': math.inf, 'by_gender/F/hr@10': 0.7, 'by_gender/F/users': 12.0, 'by_gender/M/hr@10': 0.4,
           'by_gender/M/users': 3.0, 'hr@10': 0.6}]
  out = privacy_sweep.group_rows(rows, 'hr@10')
  assert [(r['epsilon'], r['group'], r['users'], r['small'], r['value'], r['no_dp']) for r in out] == [
      (8.0, 'F', 12, False, 0.5, 0.7), (8.0, 'M', 3, True, None, 0.4), (math.inf, 'F', 12, False, 0.7, 0.7),
      (math.inf, 'M', 3, True, 0.4, 0.4)]
  assert out[0]['loss'] == pytest.approx(0.2) and out[1]['loss'] is None and out[2]['loss'] == 0.0
  # RMSE: a loss is an increase; without a run at inf there is no loss.
  rating = privacy_sweep.group_rows([{'epsilon': 1.0, 'by_age/18-24/rmse': 1.1, 'by_age/18-24/users': 20.0},
                                     {'epsilon': math.inf, 'by_age/18-24/rmse': 0.9, 'by_age/18-24/users': 20.0}],
                                    'rmse')
  assert rating[0]['loss'] == pytest.approx(0.2)
  assert privacy_sweep.group_rows(rows[:1], 'hr@10')[0]['loss'] is None


def test_bad_epsilons_are_refused():
  with pytest.raises(ValueError, match='--epsilons must be'):
    privacy_sweep.parse_epsilons(['1', 'lots'])
  with pytest.raises(ValueError, match='must be > 0'):
    privacy_sweep.parse_epsilons(['0'])

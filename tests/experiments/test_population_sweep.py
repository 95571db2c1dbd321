"""population_sweep on tiny synthetic populations: one privacy sweep per size, a CSV and a PNG."""

import csv
import json
import math
import os

import pytest
from absl.testing import flagsaver

from experiments import population_sweep
from tff_rec.federated import sampling

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


@pytest.mark.slow
def test_each_population_is_prepared_once_and_swept(tmp_path):
  settings = dict(root_output_dir=str(tmp_path / 'runs'), experiment_name='pop', population_data_dir=str(tmp_path),
                  populations=['40'], epsilons=['inf', '8'], population_items=150,
                  population_ratings_per_user=12.0, population_min_ratings=8, population_rank=4,
                  population_preference_strength=1.0, algorithm='fed_als', objective='implicit', embedding_dim=4,
                  als_alpha=5.0, als_regularization=5.0, num_negatives=1, rounds=1, clients_per_round=0,
                  client_sampling_rate=1.0, eval_every=1, checkpoint_every=1, dp='gaussian_fixed', clip_norm=1.0,
                  accountant='pld', eval_reconstruction_epochs=1, progress=False, group_metrics='none')
  with flagsaver.flagsaver(**settings, population_clip_only=True):
    assert population_sweep.main(['population_sweep']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'runs' / 'pop' / 'population_sweep.csv')))
  assert [(int(r['population']), float(r['epsilon'])) for r in rows] == [(40, 8.0), (40, math.inf)]
  clip_run = tmp_path / 'runs' / 'pop' / 'N_40' / 'clip_only'
  clip_only = json.load(open(clip_run / 'final_metrics.json'))['hr@10']
  hparams = json.load(open(clip_run / 'hparams.json'))['dp']
  assert (hparams['mechanism'], hparams['clip_norm'], hparams['noise_multiplier'], hparams['target_epsilon']) == (
      'gaussian_fixed', 1.0, population_sweep.CLIP_ONLY_NOISE, 0.0)
  for r in rows:
    assert float(r['delta']) == 1e-6  # min(1 / N^1.1, 1e-6).
    assert float(r['sampling_rate']) == 1.0
    expected = 100 * (float(r['no_dp_hr@10']) - float(r['hr@10']))
    assert float(r['loss_points']) == pytest.approx(expected) and (float(r['epsilon']) < math.inf or expected == 0)
    assert float(r['clip_only_hr@10']) == pytest.approx(clip_only)
    assert float(r['clip_points']) == pytest.approx(100 * (float(r['no_dp_hr@10']) - clip_only))
  assert float(rows[0]['noise_multiplier']) > 0 and float(rows[1]['noise_multiplier']) == 0
  assert os.path.getsize(tmp_path / 'runs' / 'pop' / 'population_sweep.png') > 0
  prepared = sorted(p for p in os.listdir(tmp_path) if p.startswith('synthetic_'))
  assert prepared == ['synthetic_u40_i150_s0']
  # A population prepared with other generator settings is never silently reused.
  with flagsaver.flagsaver(**{**settings, 'population_rank': 8, 'experiment_name': 'other'}):
    assert population_sweep.main(['population_sweep']) == 2


@pytest.mark.slow
def test_populations_drawn_from_a_prepared_dataset(tiny_dataset, tmp_path):
  settings = dict(root_output_dir=str(tmp_path / 'runs'), experiment_name='real', population_data_dir=str(tmp_path),
                  population_source=tiny_dataset, populations=['20', '10'], epsilons=['inf'], rounds=1, batch_size=8,
                  embedding_dim=4, clients_per_round=5, eval_every=1, checkpoint_every=1,
                  eval_reconstruction_epochs=1, progress=False, group_metrics='none')
  with flagsaver.flagsaver(**settings):
    assert population_sweep.main(['population_sweep']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'runs' / 'real' / 'population_sweep.csv')))
  assert [(int(r['population']), float(r['loss_points'])) for r in rows] == [(10, 0.0), (20, 0.0)]
  assert [float(r['sampling_rate']) for r in rows] == [0.5, 0.25]  # 5 users a round (uniform).
  for size in (10, 20):
    assert sorted(os.listdir(tmp_path / f'{os.path.basename(tiny_dataset)}_u{size}_s0')) == ['clients.sqlite',
                                                                                              'stats.json']
  with flagsaver.flagsaver(**{**settings, 'populations': ['20', '41']}):
    assert population_sweep.main(['population_sweep']) == 2  # More users than the dataset has.


def test_bad_populations_and_the_delta_rule():
  with pytest.raises(ValueError, match='--populations must be integers'):
    population_sweep.parse_populations(['6000', 'many'])
  with pytest.raises(ValueError, match='at least 10 users'):
    population_sweep.parse_populations(['5'])
  assert population_sweep.parse_populations(['60000', '6000', '6000']) == [6000, 60000]
  assert population_sweep.delta_for(6000) == 1e-6 and population_sweep.delta_for(600_000) == pytest.approx(
      1 / 600_000 ** 1.1)


def test_a_fixed_expected_cohort_samples_a_falling_fraction_of_larger_populations():
  uniform = sampling.SamplingConfig(clients_per_round=50)
  assert population_sweep.cohort_sampling(uniform, 600_000, 0) is uniform  # 0: the configuration's own rule.
  assert population_sweep.cohort_sampling(uniform, 6000, 60_000) == sampling.SamplingConfig(client_sampling_rate=1.0)
  assert population_sweep.cohort_sampling(uniform, 60_000, 60_000).client_sampling_rate == 1.0
  assert population_sweep.cohort_sampling(uniform, 600_000, 60_000) == sampling.SamplingConfig(
      client_sampling_rate=0.1)
  with pytest.raises(ValueError, match='--population_cohort must be >= 0, got -1'):
    population_sweep.cohort_sampling(uniform, 600_000, -1)


@pytest.mark.slow
@pytest.mark.parametrize('mechanism, extra', [('distributed', {}), ('tree', {'epoch_sampling': True})])
def test_clip_only_keeps_the_mechanism_with_almost_no_noise(tmp_path, mechanism, extra):
  settings = dict(root_output_dir=str(tmp_path / 'runs'), experiment_name='pop', population_data_dir=str(tmp_path),
                  populations=['40'], epsilons=['inf', '8'], population_items=150,
                  population_ratings_per_user=12.0, population_min_ratings=8, population_rank=4,
                  population_preference_strength=1.0, algorithm='fed_recon', objective='implicit', embedding_dim=4,
                  num_negatives=1, rounds=1, clients_per_round=30, eval_every=1, checkpoint_every=1, dp=mechanism,
                  clip_norm=1.0, eval_reconstruction_epochs=1, progress=False, group_metrics='none', **extra)
  with flagsaver.flagsaver(**settings, population_clip_only=True):
    assert population_sweep.main(['population_sweep']) == 0
  clip_run = tmp_path / 'runs' / 'pop' / 'N_40' / 'clip_only'
  hparams = json.load(open(clip_run / 'hparams.json'))['dp']
  assert (hparams['mechanism'], hparams['noise_multiplier']) == (mechanism, population_sweep.CLIP_ONLY_NOISE)
  rows = list(csv.DictReader(open(tmp_path / 'runs' / 'pop' / 'population_sweep.csv')))
  clip_only = json.load(open(clip_run / 'final_metrics.json'))['hr@10']
  assert [float(r['clip_only_hr@10']) for r in rows] == [pytest.approx(clip_only)] * 2

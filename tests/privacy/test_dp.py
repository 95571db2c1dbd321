"""DP mechanism and accounting: events per sampler, hand-computed epsilons, per-user clipping."""

import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from tff_rec import tasks
from tff_rec.federated import fed_recon
from tff_rec.federated.sampling import SamplingConfig
from tff_rec.privacy import dp


def test_event_matches_the_sampler():
  uniform = dp.round_event(1.0, SamplingConfig(clients_per_round=10), population=100)
  poisson = dp.round_event(1.0, SamplingConfig(client_sampling_rate=0.1), population=100)
  # Replace-one adjacency (fixed-size cohorts): the sum's sensitivity is twice the clip, so half the multiplier.
  assert uniform == dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.5))
  assert poisson == dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0))


def test_fixed_size_cohort_of_everyone_is_the_gaussian_mechanism_at_twice_the_sensitivity():
  """A cohort of the whole population, one round, replace-one adjacency: no sampling, and swapping one user's
  clipped update (norm <= C) for another's moves the noised sum (stddev z C) by up to 2C: Gaussian at z / 2."""
  z, delta = 3.0, 1e-5
  spent = dp.epsilons(z, SamplingConfig(clients_per_round=50), 50, 1, delta)['epsilon_rdp']
  by_hand = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(z / 2)).get_epsilon(delta)
  assert spent == pytest.approx(by_hand, rel=1e-9)
  assert spent > dp_accounting.rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(z)).get_epsilon(delta) * 1.5


def test_unsampled_gaussian_epsilon_matches_the_analytic_gaussian_mechanism():
  # q = 1, one round: the Gaussian mechanism, whose exact delta(epsilon) is (Balle & Wang, ICML 2018)
  # Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z) for sensitivity 1 and noise stddev z.
  z, delta = 2.0, 1e-4
  eps = dp.epsilons(z, SamplingConfig(client_sampling_rate=1.0), 100, 1, delta)['epsilon_pld']
  exact = stats.norm.cdf(1 / (2 * z) - eps * z) - math.exp(eps) * stats.norm.cdf(-1 / (2 * z) - eps * z)
  assert exact == pytest.approx(delta, rel=0.05)
  # RDP is an upper bound on the same mechanism.
  assert dp.epsilons(z, SamplingConfig(client_sampling_rate=1.0), 100, 1, delta)['epsilon_rdp'] >= eps


def test_issue_example_and_composition():
  # Issue 4: q = 100/943, 100 rounds, noise multiplier 1.0 gives epsilon ~7.3 at delta 1e-4 (RDP).
  spent = dp.epsilons(1.0, SamplingConfig(client_sampling_rate=100 / 943), 943, 100, 1e-4)
  assert spent['epsilon_rdp'] == pytest.approx(7.3, abs=0.1)
  assert spent['epsilon_pld'] < spent['epsilon_rdp']  # PLD is the tighter analysis.
  assert dp.epsilons(1.0, SamplingConfig(clients_per_round=100), 943, 100, 1e-4)['epsilon_pld'] is None
  fewer = dp.epsilons(1.0, SamplingConfig(client_sampling_rate=100 / 943), 943, 50, 1e-4)['epsilon_rdp']
  assert fewer < spent['epsilon_rdp']


def test_tree_aggregation_accounting_by_hand():
  """One tree over T rounds puts a user in depth = log2(T) + 1 nodes: the Gaussian mechanism at z / sqrt(depth)."""
  z, delta = 3.0, 1e-5
  epochs = SamplingConfig(clients_per_round=1, shuffle_epochs=True)  # 4 users: one tree = 4 rounds.
  assert dp.round_event(z, epochs, 4) == dp_accounting.SingleEpochTreeAggregationDpEvent(z, 4)

  def gaussian(sigma, count=1):
    return dp_accounting.rdp.RdpAccountant().compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), count)).get_epsilon(delta)

  assert dp.epsilons(z, epochs, 4, 1, delta)['epsilon_rdp'] == pytest.approx(gaussian(z), rel=1e-6)  # A leaf.
  assert dp.epsilons(z, epochs, 4, 4, delta)['epsilon_rdp'] == pytest.approx(gaussian(z / math.sqrt(3)), rel=1e-6)
  # Two full epochs: two trees (the tree restarts), each user in each once.
  assert dp.epsilons(z, epochs, 4, 8, delta)['epsilon_rdp'] == pytest.approx(gaussian(z / math.sqrt(3), 2),
                                                                              rel=1e-6)
  assert dp.epsilons(z, epochs, 4, 8, delta)['epsilon_pld'] is None


def test_mechanism_and_sampler_must_match():
  with pytest.raises(ValueError, match='--dp=tree .* --epoch_sampling'):
    dp.check_sampling(dp.DPConfig(dp.TREE, 1.0), SamplingConfig(clients_per_round=10))
  with pytest.raises(ValueError, match='not --epoch_sampling'):
    dp.check_sampling(dp.DPConfig(dp.GAUSSIAN_FIXED, 1.0), SamplingConfig(clients_per_round=10, shuffle_epochs=True))
  with pytest.raises(ValueError, match='--accountant=pld'):  # dp_accounting has no PLD analysis of these.
    dp.check_sampling(dp.DPConfig(dp.GAUSSIAN_FIXED, 1.0, accountant=dp.PLD), SamplingConfig(clients_per_round=10))
  dp.check_sampling(dp.DPConfig(dp.GAUSSIAN_FIXED, 1.0, accountant=dp.PLD), SamplingConfig(client_sampling_rate=0.1))


def test_a_budget_no_noise_can_meet_is_a_clear_error():
  with pytest.raises(dp.PrivacyConfigError, match='even a noise multiplier of 1000 spends epsilon'):
    dp.calibrate_noise(1e-5, SamplingConfig(client_sampling_rate=0.1), 1000, 200, 1e-5)
  with pytest.raises(dp.PrivacyConfigError, match='more than 20 clients'):  # TFF's adaptive clip's own limit.
    dp.aggregation_factory(dp.DPConfig(dp.GAUSSIAN_ADAPTIVE, 2.0), clients=20)


def test_calibration_hits_the_budget():
  sampling = SamplingConfig(client_sampling_rate=0.1)
  z = dp.calibrate_noise(4.0, sampling, 1000, 200, 1e-5)
  assert dp.epsilons(z, sampling, 1000, 200, 1e-5)['epsilon_rdp'] == pytest.approx(4.0, rel=1e-3)
  assert dp.epsilons(z * 0.95, sampling, 1000, 200, 1e-5)['epsilon_rdp'] > 4.0
  assert dp.calibrate_noise(2.0, sampling, 1000, 200, 1e-5) > z  # Less budget, more noise.


POISSON = SamplingConfig(client_sampling_rate=0.2)  # (Small rates keep RDP's and PLD's analyses fast.)


@pytest.fixture(scope='module')
def pld_noise():
  """(RDP-calibrated, PLD-calibrated) noise multipliers for epsilon 2 over 10 rounds at rate 0.2."""
  return dp.calibrate_noise(2.0, POISSON, 100, 10, 1e-4), dp.calibrate_noise(2.0, POISSON, 100, 10, 1e-4, dp.PLD)


def test_pld_calibration_hits_the_budget_with_less_noise(pld_noise):
  z_rdp, z = pld_noise
  spent = dp.epsilons(z, POISSON, 100, 10, 1e-4)
  assert spent['epsilon_pld'] == pytest.approx(2.0, rel=1e-3) and spent['epsilon_rdp'] > 2.0
  assert dp.epsilons(z * 0.97, POISSON, 100, 10, 1e-4)['epsilon_pld'] > 2.0  # The smallest such noise.
  assert 0.85 * z_rdp < z < 0.95 * z_rdp  # PLD's tighter analysis: about 10% less noise here.


def test_budget_stop_uses_the_chosen_accountant(pld_noise):
  _, z = pld_noise
  for accountant, stops in ((dp.PLD, False), (dp.RDP, True)):
    config = dp.DPConfig(dp.GAUSSIAN_FIXED, z, target_delta=1e-4, target_epsilon=2.0, accountant=accountant)
    ledger = dp.PrivacyLedger(config, POISSON, 100)
    assert (ledger.budget(10) is not None) == stops
  assert ledger.budget(6) is None  # RDP: a budget of 2 affords fewer rounds at this noise.
  with pytest.raises(ValueError, match='--accountant must be one of'):
    dp.DPConfig(dp.GAUSSIAN_FIXED, 1.0, accountant='moments').validate()


def test_a_void_guarantee_skips_pld_instead_of_exhausting_memory():
  # Noise 1e-9: RDP's epsilon is astronomical; PLD's discretisation would exceed numpy's largest array.
  spent = dp.epsilons(1e-9, POISSON, 100, 2, 1e-4)
  assert spent['epsilon_rdp'] > dp.PLD_EPSILON_LIMIT and spent['epsilon_pld'] is None
  ledger = dp.PrivacyLedger(dp.DPConfig(dp.GAUSSIAN_FIXED, 1e-9, accountant=dp.PLD), POISSON, 100)
  assert ledger.spent(2) == spent['epsilon_rdp']  # The chosen PLD falls back on RDP's upper bound.
  assert ledger.round_metrics(2) == {'privacy/epsilon_rdp': spent['epsilon_rdp']}
  with pytest.raises(dp.PrivacyConfigError, match='--accountant=pld computes epsilon up to 64 .*use --accountant=rdp'):
    dp.calibrate_noise(100.0, POISSON, 100, 2, 1e-4, dp.PLD)

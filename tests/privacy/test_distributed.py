"""Distributed DP (TFF's distributed Skellam secure mean): its accounting, checked against known cases."""

import math
import os
import subprocess
import sys

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
import pytest
import tensorflow_federated as tff

from tff_rec.privacy import distributed

ORDERS = distributed.ORDERS


def gaussian_rdp(z: float) -> np.ndarray:
  return np.array([a / (2 * z**2) for a in ORDERS])


def test_skellam_rdp_tends_to_the_gaussian_mechanisms():
  """With much noise (mu >> D1), the Skellam mechanism's RDP is the Gaussian's at the same variance (replace-one:
  sensitivity 2 x bound), plus the clipped count's Gaussian term."""
  mechanism = distributed.SkellamRound(l2_bound=1e4, local_stddev=2e4, clients=100, padded_dim=1024,
                                       count_stddev=5.0)
  z_values = math.sqrt(100) * 2e4 / (2 * 1e4)  # central stddev / replace-one sensitivity
  expected = gaussian_rdp(z_values) + gaussian_rdp(5.0 / 1.0)
  got = distributed.round_rdp(mechanism)
  np.testing.assert_allclose(got, expected, rtol=1e-3)
  assert np.all(got >= expected)  # The discrete mechanism never costs less than its Gaussian part.


def test_skellam_rdp_by_hand():
  m = distributed.SkellamRound(l2_bound=3.0, local_stddev=2.0, clients=4, padded_dim=16, count_stddev=0.0)
  assert m.l1_bound == 9  # ceil(3 x min(sqrt(16), 3))
  mu, d2, d1, a = 16.0, 6.0, 18.0, 2
  skellam = a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
  # count_stddev 0: the clipped count is released without noise, so no finite RDP.
  assert math.isinf(distributed.round_rdp(m, orders=[2])[0])
  with_count = distributed.SkellamRound(3.0, 2.0, 4, 16, count_stddev=10.0)
  assert distributed.round_rdp(with_count, orders=[2])[0] == pytest.approx(skellam + 2 / (2 * 100.0))


def test_sampling_bound_is_dp_accountings_for_the_gaussian_where_both_use_theorem_9():
  """dp_accounting applies Wang et al.'s Theorem 9 to the Gaussian above order 256 (Theorem 27, tighter, below):
  the general bound must equal it there and lie above it below."""
  z, q = 1.5, 0.1
  orders = list(range(2, 301))
  general = distributed.sampled_without_replacement_rdp(np.array([a / (2 * z**2) for a in orders]), q, orders)
  library = rdp_privacy_accountant._compute_rdp_sample_wor_gaussian(q, z, orders)  # pylint: disable=protected-access
  np.testing.assert_allclose(general[-1], library[-1], rtol=1e-9)  # alpha = 300 > 256
  assert np.all(general[:255] >= library[:255] * (1 - 1e-9))
  assert general[10] < 1.5 * library[10]  # Not a vacuous bound.
  assert np.all(general <= np.array([a / (2 * z**2) for a in orders]))  # Sampling never costs more.


def test_epsilon_grows_with_rounds_and_falls_with_noise():
  m = distributed.SkellamRound(l2_bound=1e5, local_stddev=1e4, clients=100, padded_dim=16384, count_stddev=5.0)
  per_round = distributed.round_rdp(m)
  eps = [distributed.epsilon(per_round, 0.1, rounds, 1e-5) for rounds in (0, 1, 10, 100)]
  assert eps[0] == 0 and eps[1] < eps[2] < eps[3]
  quieter = distributed.round_rdp(distributed.SkellamRound(1e5, 2e4, 100, 16384, 5.0))
  assert distributed.epsilon(quieter, 0.1, 100, 1e-5) < eps[3]


UPDATE = tff.to_type([tff.TensorType(np.float32, [151, 4]), tff.TensorType(np.float32, [151, 1])])


def test_accounting_reads_the_aggregators_own_parameters():
  z, clients = 1.0, 50
  first = distributed.initial_round(z, clients, UPDATE)
  assert first.padded_dim == 1024 and first.clients == clients
  # TFF splits z between the values and the clipped count (Andrew et al.): 1/z^2 = 1/z_v^2 + 1/(2 sigma_b)^2.
  assert first.count_stddev == pytest.approx(0.05 * clients)
  z_values = (z**-2 - (2 * first.count_stddev) ** -2) ** -0.5
  central = math.sqrt(clients) * first.local_stddev
  # The bound is the clip (0.1) inflated by rounding, in the same scaled units as the noise.
  assert first.l2_bound / central == pytest.approx(1 / z_values, rel=2e-2)
  assert first.l2_bound / central >= 1 / z_values


def test_calibration_hits_the_budget_and_rounds_are_checked():
  z = distributed.calibrate(8.0, 50, 500, 20, 1e-4, UPDATE)
  accountant = distributed.Accountant(z, 50, 500, UPDATE)
  assert accountant.epsilon(20, 1e-4) == pytest.approx(8.0, rel=1e-3)
  assert accountant.epsilon(20, 1e-4) <= 8.0
  assert distributed.Accountant(z * 0.97, 50, 500, UPDATE).epsilon(20, 1e-4) > 8.0
  first = accountant.first
  same = dict(scaled_inflated_l2=first.l2_bound, scaled_local_stddev=first.local_stddev, actual_num_clients=50,
              padded_dim=first.padded_dim)
  accountant.check(same)
  with pytest.raises(distributed.DriftError, match='exceed the accounted'):
    accountant.check({**same, 'scaled_local_stddev': first.local_stddev * 0.9})
  with pytest.raises(distributed.DriftError, match='49 clients'):
    accountant.check({**same, 'actual_num_clients': 49})
  with pytest.raises(ValueError, match='no noise multiplier below'):
    distributed.calibrate(0.01, 50, 500, 2000, 1e-4, UPDATE)


def test_a_fed_recon_round_through_the_distributed_dp_secure_mean(tiny_dataset):
  """In a process on the pure-Python protobuf runtime (TFF 0.87's composed round is too deep for upb): only
  aggregates leave a client, the update through the secure sum, without noise the result is the plain mean
  up to the integer rounding, and an empty client in the cohort still adds its noise share
  (tests/privacy/ddp_round_check.py)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, 'PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION': 'python', 'PYTHONPATH': root}
  done = subprocess.run([sys.executable, '-m', 'tests.privacy.ddp_round_check', tiny_dataset], cwd=root, env=env,
                        capture_output=True, text=True, timeout=1200, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith('ok')


def test_the_upb_runtime_is_refused_with_the_fix():
  if distributed.api_implementation.Type() == 'python':
    pytest.skip('this process already runs the pure-Python protobuf runtime')
  with pytest.raises(ValueError, match='PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python'):
    distributed.check_protobuf()

"""Distributed DP: the per-user shard aggregator against TFF's distributed Skellam secure mean, and its accounting."""

import collections
import math

from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests.privacy.test_data_flow import AGGREGATIONS, client_to_server_intrinsics
from tff_rec import tasks
from tff_rec.federated import aggregation, fed_recon, process
from tff_rec.privacy import distributed
from tff_rec.training_loop import flatten_metrics

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


def _tff_ddp(noise_multiplier: float, clients: int, value_type):
  """TFF 0.87's distributed-DP secure mean, the reference (deleted from TFF's main branch since)."""
  return tff.learning.ddp_secure_aggregator(noise_multiplier, clients, bits=distributed.BITS, zeroing=False,
                                            rotation_type='hd').create(value_type)


def test_first_round_parameters_are_those_of_tffs_aggregator():
  for z, clients in ((1.0, 50), (0.3, 7)):
    state = _tff_ddp(z, clients, UPDATE).initialize()
    value_state = state[0][0]  # UnweightedMean(value=DistributedDpSum, count) -> the DistributedDpSum's state.
    query = value_state['inner_agg']['inner_agg_process'].query_state
    count_stddev = value_state['clipping_norm'][0].below_estimate_state.numerator_state.stddev
    first = distributed.initial_round(z, clients, UPDATE)
    assert first.l2_bound == pytest.approx(float(query.l2_norm_bound), rel=1e-6)
    assert first.l1_bound == pytest.approx(int(query.l1_norm_bound), rel=1e-6)  # float32 vs TFF's float64 at init.
    assert first.local_stddev == pytest.approx(float(query.local_stddev), rel=1e-6)
    assert first.count_stddev == pytest.approx(float(count_stddev))


DENSE = [tf.TensorSpec([20, 4], tf.float32), tf.TensorSpec([20], tf.float32)]


def _users(seed: int = 0, users: int = 6, large: int = 1):
  """`users` users' sparse updates of DENSE (5 rows each; the first `large` far over the clip 0.1) and the same
  updates dense, one per TFF client."""
  rng = np.random.default_rng(seed)
  rows = np.stack([rng.choice(20, 5, replace=False) for _ in range(users)]).astype(np.int64)
  table = rng.normal(size=(users, 5, 4)).astype(np.float32) * 0.01
  bias = rng.normal(size=(users, 5)).astype(np.float32) * 0.01
  table[:large] *= 100
  bias[:large] *= 100

  def shard(ix):
    ix = np.asarray(ix)
    return collections.OrderedDict(rows=[rows[ix], rows[ix]], deltas=[table[ix], bias[ix]],
                                   weight=np.ones(len(ix), np.float32), examples=np.ones(len(ix), np.float32),
                                   keys=ix.astype(np.int64))

  dense = []
  for u in range(users):
    a, b = np.zeros([20, 4], np.float32), np.zeros([20], np.float32)
    a[rows[u]], b[rows[u]] = table[u], bias[u]
    dense.append([a, b])
  return shard, dense


def _flat(value) -> np.ndarray:
  return np.concatenate([np.ravel(v) for v in value])


def test_per_user_distributed_dp_is_tffs_secure_mean_one_client_per_user():
  """Without noise: TFF's distributed-DP mean over one TFF client per user and ours over shards of users are both
  the mean of the users' clipped updates up to the integer rounding (< sqrt(d) / scale per user), report the same
  parameters, and move the clip alike (1 of 6 users over it: by exp(-0.2 (5/6 - 1/2)))."""
  shard, dense = _users()
  ours = aggregation.DistributedDPFactory(0.0, 6, DENSE, seed=0).create(aggregation.user_updates_type(DENSE))
  theirs = _tff_ddp(0.0, 6, tff.to_type([tff.TensorType(np.float32, s.shape) for s in DENSE]))
  flat = np.stack([_flat(d) for d in dense])
  norms = np.linalg.norm(flat, axis=1)
  assert (norms > distributed.INITIAL_CLIP).sum() == 1
  exact = (flat * np.minimum(1.0, distributed.INITIAL_CLIP / norms)[:, None]).mean(axis=0)
  state, reference = ours.initialize(), theirs.initialize()
  for r in range(2):
    out, ref = ours.next(state, [shard([0, 1]), shard([2, 3, 4, 5])]), theirs.next(reference, dense)
    state, reference = out.state, ref.state
    got, expected = out.measurements['mean_value'], ref.measurements['mean_value']
    for key in ('l2_clip', 'scale_factor', 'scaled_inflated_l2', 'scaled_local_stddev', 'actual_num_clients',
                'padded_dim'):
      assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-6), key
    if r == 0:
      bound = np.sqrt(float(got['padded_dim'])) / float(got['scale_factor'])
      assert np.linalg.norm(_flat(out.result) - exact) <= bound and np.linalg.norm(exact) > 100 * bound
      assert np.linalg.norm(_flat(ref.result) - exact) <= bound
      assert out.measurements['clipped_count'] == 1
  assert float(got['l2_clip']) == pytest.approx(distributed.INITIAL_CLIP * np.exp(-0.2 * (5 / 6 - 0.5)), rel=1e-5)


def test_rounding_is_per_user_and_the_noise_of_the_accounted_size_whatever_the_shards():
  """Without noise, any cut of the users into shards gives the same mean (each user's rounding is drawn under
  (seed, round, its key)). With noise, a shard draws its users' shares as one Skellam(users x lambda): for any cut
  the noise has the accounted stddev; the same seed draws it again, another seed other noise."""
  shard, dense = _users(users=10)
  cuts = ([shard(range(10))], [shard([0, 1, 2]), shard(range(3, 10))], [shard([u]) for u in range(10)])

  def means(z, seed=0):
    process = aggregation.DistributedDPFactory(z, 10, DENSE, seed=seed).create(aggregation.user_updates_type(DENSE))
    return [_flat(process.next(process.initialize(), cut).result) for cut in cuts]

  exact = means(0.0)
  assert all(np.array_equal(exact[0], r) for r in exact[1:])
  noisy = means(0.5)
  assert all(np.array_equal(a, b) for a, b in zip(noisy, means(0.5)))
  assert not np.allclose(means(0.5, seed=1)[0], noisy[0])
  # The mean's noise: central stddev z_v x clip over 10 users, per coordinate (TFF's split of z = 0.5).
  value_noise, _ = distributed.noise_split(0.5, 10)
  for result in noisy:
    assert np.std(result - exact[0]) == pytest.approx(value_noise * distributed.INITIAL_CLIP / 10, rel=0.25)


def test_a_fed_recon_round_under_distributed_dp_sends_only_the_secure_sum(tiny_dataset):
  """On the shard process: only aggregates leave a shard and the update only through the secure sum; an empty
  user of the cohort adds its noise share (counted), and the accountant accepts the round's parameters."""
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8), embedding_dim=4)
  config = fed_recon.ReconConfig('sgd', 1.0, 0.02, 0.5, split_dataset=False)
  cohort = 10
  engine = process.ShardEngine(task, config, users_per_shard=4, eval_learning_rate=0.5, eval_epochs=1,
                               aggregation=lambda dense: aggregation.DistributedDPFactory(0.5, cohort, dense, 0))
  moved = client_to_server_intrinsics(engine.process.next)
  assert set(moved) <= AGGREGATIONS, moved
  assert moved.count('federated_secure_sum_bitwidth') == 4 and moved.count('federated_sum') == 1, moved
  value_type = tff.to_type([tff.TensorType(np.float32, w.shape) for w in engine.global_weights(engine.initialize())])
  accountant = distributed.Accountant(0.5, cohort, 40, value_type)
  checked = []
  engine.round_check = lambda measurements: checked.append(accountant.check(measurements['mean_value']))
  examples = task.train_examples(task.train_data.client_ids[:cohort - 1], 0, seed=0)
  examples.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
  out = engine.next(engine.initialize(), examples)
  assert checked == [None]
  metrics = flatten_metrics(out.metrics)
  assert metrics['aggregator/mean_value/actual_num_clients'] == cohort
  assert metrics['client_work/empty_clients'] == 1
  assert all(np.isfinite(w).all() for w in engine.global_weights(out.state))


@pytest.mark.parametrize('dim', [1, 2, 128, 4096])
def test_the_rotation_is_tffs_walsh_hadamard_transform(dim):
  from tensorflow_federated.python.aggregators import hadamard  # pylint: disable=g-import-not-at-top
  x = tf.random.stateless_normal([3, dim], seed=[0, dim])
  np.testing.assert_allclose(aggregation._hadamard(x), hadamard.fast_walsh_hadamard_transform(x), atol=2e-6)
  np.testing.assert_allclose(aggregation._hadamard(aggregation._hadamard(x)), x, atol=2e-6)  # Its own inverse.

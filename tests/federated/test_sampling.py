"""Seeded client sampling."""

import numpy as np
import pytest

from tff_rec.federated import sampling

IDS = [str(i) for i in range(100)]


def test_uniform_is_a_seeded_subset_independent_of_history():
  config = sampling.SamplingConfig(clients_per_round=10)
  cohort = sampling.sample_clients(IDS, 5, seed=0, config=config)
  assert len(cohort) == len(set(cohort)) == 10 and set(cohort) <= set(IDS)
  assert cohort == sampling.sample_clients(list(reversed(IDS)), 5, seed=0, config=config)
  assert cohort != sampling.sample_clients(IDS, 6, seed=0, config=config)
  assert cohort != sampling.sample_clients(IDS, 5, seed=1, config=config)


def test_poisson_rate():
  config = sampling.SamplingConfig(client_sampling_rate=0.2)
  sizes = [len(sampling.sample_clients(IDS, r, seed=0, config=config)) for r in range(200)]
  assert 18 < sum(sizes) / len(sizes) < 22  # Mean 20, std of the mean ~0.28.
  assert len(set(sizes)) > 3  # The cohort size varies.


@pytest.mark.parametrize('config, message', [
    (sampling.SamplingConfig(), 'set exactly one'),
    (sampling.SamplingConfig(clients_per_round=5, client_sampling_rate=0.1), 'set exactly one'),
    (sampling.SamplingConfig(clients_per_round=101), 'exceeds the 100 training clients'),
    (sampling.SamplingConfig(client_sampling_rate=1.5), 'must be in'),
    (sampling.SamplingConfig(client_sampling_rate=0.1, shuffle_epochs=True), 'cuts epochs into cohorts'),
])
def test_bad_sampling(config, message):
  with pytest.raises(ValueError, match=message):
    config.validate(len(IDS))


def test_sorted_array_and_any_list_order_give_the_same_cohort():
  ids = [f'u{i:03d}' for i in range(50)]
  config = sampling.SamplingConfig(clients_per_round=7)
  from_array = sampling.sample_clients(np.array(ids), 3, 0, config)
  assert from_array == sampling.sample_clients(list(reversed(ids)), 3, 0, config)
  assert all(isinstance(c, str) for c in from_array)


def test_shuffled_epochs_take_each_client_at_most_once_per_epoch():
  config = sampling.SamplingConfig(clients_per_round=30, shuffle_epochs=True)
  per_epoch = config.rounds_per_epoch(len(IDS))
  assert per_epoch == 3  # 100 clients, cohorts of 30: 10 sit each epoch out.
  epochs = [[sampling.sample_clients(IDS, r, 0, config) for r in range(1 + e * 3, 4 + e * 3)] for e in range(2)]
  for cohorts in epochs:
    members = [c for cohort in cohorts for c in cohort]
    assert all(len(c) == 30 for c in cohorts) and len(set(members)) == 90
  assert set(sum(epochs[0], [])) != set(sum(epochs[1], []))  # Each epoch its own shuffle.
  assert sampling.sample_clients(IDS, 5, 0, config) == epochs[1][1]  # A function of (seed, round) alone.
  assert config.method == 'epochs'


def test_silo_users_are_the_users_of_the_sampled_platforms():
  members = {'p0': ['u1', 'u2'], 'p1': ['u3'], 'p2': ['u4', 'u5', 'u6']}
  config = sampling.SamplingConfig(clients_per_round=2)
  for r in range(1, 6):
    users = sampling.sample_silo_users(members, r, 0, config)
    platforms = sampling.sample_clients(sorted(members), r, 0, config)
    assert users == sorted(u for p in platforms for u in members[p])


def test_groups_are_each_platforms_users_positions_in_the_cohort():
  members = {'p1': ['u3'], 'p0': ['u1', 'u5'], 'p2': ['u4', 'u6']}
  assert sampling.groups_of(['u1', 'u3', 'u5'], members) == [[0, 2], [1]]  # p2 took no part.

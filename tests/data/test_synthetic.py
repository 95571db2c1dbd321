"""The synthetic generator's choice model: what a user rates follows its preferences when asked to."""

import dataclasses

import numpy as np
import pytest

from tff_rec.data.records import DataError
from tff_rec.data.synthetic import SyntheticConfig, SyntheticSource


def _mean_preference(source: SyntheticSource, users: range) -> float:
  """The mean over users of sqrt(rank) <p_u, q_i> over the items they rated (p_u: the factors that made them)."""
  cfg = source.config
  values = []
  for user_id in users:
    rated = source.user(user_id)
    rng = np.random.default_rng([cfg.seed, 10, user_id])  # The user's own stream (_USER_PURPOSE) ...
    rng.pareto(2.0)  # ... draws its number of ratings, then its factors.
    factors = rng.normal(0, 1 / np.sqrt(cfg.rank), cfg.rank).astype(np.float32)
    values.append(np.mean(np.sqrt(cfg.rank) * source._item_factors[rated.item_ids - 1] @ factors))
  return float(np.mean(values))


def test_users_choose_what_they_prefer_with_preference_strength():
  personal = SyntheticSource(SyntheticConfig(num_users=200, num_items=400, rank=8, preference_strength=2.0,
                                             min_ratings_per_user=20, mean_ratings_per_user=30.0))
  users = range(1, 201)
  # The choice logit's personal part has unit variance (items at random: mean 0): chosen items lean to the
  # user's taste, clearly; a weaker strength leans less.
  strong = _mean_preference(personal, users)
  weak = _mean_preference(SyntheticSource(dataclasses.replace(personal.config, preference_strength=0.5)), users)
  assert strong > 0.8 and 0.1 < weak < strong
  ratings = [len(personal.user(u)) for u in users]
  assert min(ratings) >= 20 and 25 < np.mean(ratings) < 40
  assert all(len(set(personal.user(u).item_ids)) == len(personal.user(u)) for u in range(1, 20))  # No repeats.
  first, again = personal.user(7), personal.user(7)
  np.testing.assert_array_equal(first.item_ids, again.item_ids)  # Deterministic per (seed, user).


def test_popularity_only_datasets_are_unchanged_by_the_new_settings():
  """preference_strength 0 (the default) draws exactly as before the choice model existed."""
  source = SyntheticSource(SyntheticConfig(num_users=5, num_items=150, seed=0))
  rated = source.user(3)
  rng = np.random.default_rng([0, 10, 3])
  n = 5 + int(round(rng.pareto(2.0) * (20.0 - 5)))
  np.testing.assert_array_equal(rated.item_ids, source._sample_items(rng, n) + 1)


@pytest.mark.parametrize('settings, message', [
    ({'preference_strength': -1.0}, '--preference_strength must be >= 0'),
    ({'min_ratings_per_user': 3}, r'--min_ratings_per_user must be in \[5, --ratings_per_user\]'),
    ({'min_ratings_per_user': 40}, r'--min_ratings_per_user must be in \[5, --ratings_per_user\]'),
])
def test_bad_generator_settings_are_named(settings, message):
  with pytest.raises(DataError, match=message):
    SyntheticConfig(num_users=5, num_items=150, **settings).validate()

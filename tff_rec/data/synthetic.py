"""Synthetic rating data at any scale, streamed one user at a time.

Ratings come from a low-rank ground truth with noise:
  r(u, i) = clip(round(mu + b_u + b_i + <p_u, q_i> + eps), 1, 5),  eps ~ N(0, noise^2),
the generative model behind matrix factorization (Koren, Bell & Volinsky,
"Matrix Factorization Techniques for Recommender Systems", IEEE Computer 2009).
User activity is power-law (Lomax/Pareto II, alpha = 2, at least
`min_ratings_per_user`) and item popularity Zipfian, as in real rating data.

Which items a user rates is by popularity alone by default, so implicit
feedback (what was rated) has nothing personal to learn. With
`preference_strength` s > 0 the user chooses by a logit model instead:
P(i) ~ popularity(i) x exp(s z_ui), z_ui = sqrt(rank) <p_u, q_i> (unit
variance), drawn without replacement by the Gumbel-top-k trick (Kool, van Hoof
& Welling, ICML 2019): s is the standard deviation of the personal part of the
choice logit, and the same factors make the ratings. Only item-side state is held in memory; each
user is generated from its own seeded generator, so output does not depend on
how many users are materialised at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from tff_rec.data import schema
from tff_rec.data.records import DataError, Item, User, UserRatings

MIN_RATINGS = 5  # Enough for train + leave-one-out validation and test.
NUM_OCCUPATIONS = 21  # As many as MovieLens has.
_USER_PURPOSE, _ITEM_PURPOSE = 10, 11
_BASE_TIME = 880_000_000


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  num_users: int
  num_items: int
  seed: int = 0
  mean_ratings_per_user: float = 20.0
  rank: int = 8
  noise_stddev: float = 0.5
  preference_strength: float = 0.0  # 0: items chosen by popularity alone (see the module docstring).
  min_ratings_per_user: int = MIN_RATINGS

  def validate(self) -> None:
    """Raises DataError when the sizes cannot make a valid dataset."""
    min_items = MIN_RATINGS + schema.NUM_NEGATIVES + 1
    if self.num_users < 1:
      raise DataError(f'--num_users must be >= 1, got {self.num_users}')
    if self.num_items < min_items:
      raise DataError(f'--num_items must be >= {min_items} ({MIN_RATINGS} ratings plus '
                      f'{schema.NUM_NEGATIVES} unrated negatives per user), got {self.num_items}')
    if not MIN_RATINGS <= self.mean_ratings_per_user <= self.num_items - schema.NUM_NEGATIVES - 1:
      raise DataError(f'--ratings_per_user must be in [{MIN_RATINGS}, '
                      f'{self.num_items - schema.NUM_NEGATIVES - 1}], got {self.mean_ratings_per_user}')
    if self.rank < 1 or self.noise_stddev < 0:
      raise DataError(f'rank must be >= 1 and noise >= 0, got {self.rank}, {self.noise_stddev}')
    if self.preference_strength < 0:
      raise DataError(f'--preference_strength must be >= 0, got {self.preference_strength}')
    if not MIN_RATINGS <= self.min_ratings_per_user <= self.mean_ratings_per_user:
      raise DataError(f'--min_ratings_per_user must be in [{MIN_RATINGS}, --ratings_per_user], got '
                      f'{self.min_ratings_per_user}')


def occupation_name(index: int) -> str:
  return f'occupation_{index:02d}'


class SyntheticSource:
  """Items, user ids and a stream of users for a `SyntheticConfig`."""

  def __init__(self, config: SyntheticConfig):
    config.validate()
    self.config = config
    rng = np.random.default_rng([config.seed, _ITEM_PURPOSE])
    m = config.num_items
    self._item_factors = rng.normal(0, 1 / np.sqrt(config.rank), (m, config.rank)).astype(np.float32)
    self._item_bias = rng.normal(0, 0.3, m).astype(np.float32)
    popularity = 1.0 / np.arange(1, m + 1) ** 0.8
    popularity = popularity[rng.permutation(m)]
    self._popularity_cdf = np.cumsum(popularity / popularity.sum())
    self._log_popularity = np.log(popularity / popularity.sum())
    years = rng.integers(1950, 2001, m)
    self.items = {}
    for i in range(m):
      genres = tuple(sorted(rng.choice(np.arange(1, schema.NUM_GENRES), size=rng.integers(1, 4), replace=False).tolist()))
      self.items[i + 1] = Item(i + 1, f'Synthetic item {i + 1}', int(years[i]), genres)
    occupation_weights = 1.0 / np.arange(1, NUM_OCCUPATIONS + 1)
    self._occupation_p = occupation_weights / occupation_weights.sum()

  @property
  def user_ids(self) -> np.ndarray:
    return np.arange(1, self.config.num_users + 1, dtype=np.int64)

  def expected_occupation_counts(self) -> dict[str, float]:
    return {occupation_name(k): p * self.config.num_users for k, p in enumerate(self._occupation_p)}

  def _sample_items(self, rng: np.random.Generator, n: int) -> np.ndarray:
    chosen: dict[int, None] = {}
    while len(chosen) < n:
      draws = np.searchsorted(self._popularity_cdf, rng.random(2 * n), side='right')
      for item in np.minimum(draws, self.config.num_items - 1).tolist():
        chosen.setdefault(item, None)
        if len(chosen) == n:
          break
    return np.fromiter(chosen, np.int64, n)

  def _choose_items(self, rng: np.random.Generator, n: int, factors: np.ndarray) -> np.ndarray:
    """n distinct items by the logit choice model (module docstring), in a random order."""
    preference = np.sqrt(self.config.rank) * (self._item_factors @ factors)
    keys = self._log_popularity + self.config.preference_strength * preference + rng.gumbel(size=len(preference))
    chosen = np.argpartition(-keys, n - 1)[:n]
    return rng.permutation(chosen).astype(np.int64)

  def user(self, user_id: int) -> UserRatings:
    """Generates one user's ratings (deterministic in seed and user id)."""
    cfg = self.config
    rng = np.random.default_rng([cfg.seed, _USER_PURPOSE, user_id])
    cap = cfg.num_items - schema.NUM_NEGATIVES - 1
    least = cfg.min_ratings_per_user
    n = least + int(round(rng.pareto(2.0) * (cfg.mean_ratings_per_user - least)))
    n = min(n, cap)
    if cfg.preference_strength > 0:
      factors = rng.normal(0, 1 / np.sqrt(cfg.rank), cfg.rank).astype(np.float32)
      idx = self._choose_items(rng, n, factors)
    else:  # (Draws in this order keep popularity-only datasets as they were.)
      idx = self._sample_items(rng, n)
      factors = rng.normal(0, 1 / np.sqrt(cfg.rank), cfg.rank).astype(np.float32)
    scores = 3.5 + rng.normal(0, 0.3) + self._item_bias[idx] + self._item_factors[idx] @ factors
    ratings = np.clip(np.round(scores + rng.normal(0, cfg.noise_stddev, n)), 1, 5).astype(np.float32)
    timestamps = _BASE_TIME + np.cumsum(rng.integers(1, 86_400, n))
    user = User(user_id, int(rng.integers(18, 71)), 'MF'[int(rng.integers(0, 2))],
                occupation_name(int(rng.choice(NUM_OCCUPATIONS, p=self._occupation_p))))
    return UserRatings(user, idx + 1, ratings, timestamps.astype(np.int64))

  def users(self) -> Iterator[UserRatings]:
    for user_id in self.user_ids.tolist():
      yield self.user(user_id)

"""Per-user evaluation splits, in plain numpy.

* Ranking: temporal leave-one-out with 99 sampled negatives, the protocol of
  NCF (He et al., WWW 2017) and PFedRec (Zhang et al., IJCAI 2023).
* Rating: a random 80/10/10 split of each user's ratings (for RMSE).
* Held-out users: a seeded fraction of users kept out of every training split,
  the setting of Federated Reconstruction (Singhal et al., NeurIPS 2021).

Every random choice uses a generator seeded by (seed, purpose, user id), so a
user's split does not depend on the order users are processed in: streaming
and in-memory preparation give identical data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tff_rec.data.records import DataError, UserRatings

# Purposes, so different random choices for one user are independent streams.
_NEGATIVES_VAL, _NEGATIVES_TEST, _RATING_SPLIT, _HELDOUT = 1, 2, 3, 4


def user_rng(seed: int, purpose: int, user_id: int) -> np.random.Generator:
  """The generator for one (seed, purpose, user) triple."""
  return np.random.default_rng([seed, purpose, user_id])


@dataclasses.dataclass(frozen=True)
class Split:
  """Indices into a user's ratings; val/test may be empty for tiny users."""

  train: np.ndarray
  val: np.ndarray
  test: np.ndarray


def leave_one_out(ratings: UserRatings) -> Split:
  """Temporal leave-one-out.

  Test is the latest rating by timestamp, ties broken by the largest item id;
  validation is the latest of the rest by the same rule; train is the rest.
  A user with 2 ratings gets no validation example, one with 1 only train.
  """
  order = np.lexsort((ratings.item_ids, ratings.timestamps))  # Last key is primary.
  n = len(order)
  if n >= 3:
    return Split(order[:-2], order[-2:-1], order[-1:])
  if n == 2:
    return Split(order[:1], order[:0], order[1:])
  return Split(order, order[:0], order[:0])


def random_split(ratings: UserRatings, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> Split:
  """A seeded random train/val/test split of one user's ratings.

  Validation and test each get round(fraction * n) ratings, as long as at least
  one rating stays in train.
  """
  n = len(ratings)
  perm = user_rng(seed, _RATING_SPLIT, ratings.user.user_id).permutation(n)
  n_val = int(fractions[1] * n + 0.5)
  n_test = int(fractions[2] * n + 0.5)
  if n - n_val - n_test < 1:
    n_val = n_test = 0
  return Split(perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test])


def sample_negatives(rated: np.ndarray, catalogue: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """Samples `k` distinct items uniformly from `catalogue` minus `rated`.

  Args:
    rated: Item ids the user rated (in any split).
    catalogue: All item ids, sorted, unique.
    k: How many negatives.
    rng: The user's generator.

  Returns:
    int64 array of `k` distinct unrated item ids, in sampling order.

  Raises:
    DataError: If the user rated too many items to leave `k` negatives.
  """
  rated_set = set(rated.tolist())
  available = len(catalogue) - len(rated_set)
  if available < k:
    raise DataError(f'cannot sample {k} negatives: only {available} of {len(catalogue)} items are unrated')
  if available < 4 * k:  # Dense user: sample from the explicit complement.
    return rng.choice(np.setdiff1d(catalogue, rated), size=k, replace=False)
  chosen: list[int] = []
  taken = set(rated_set)
  while len(chosen) < k:  # Rejection sampling: O(k) expected for sparse users.
    for item in rng.choice(catalogue, size=2 * k).tolist():
      if item not in taken:
        taken.add(item)
        chosen.append(item)
        if len(chosen) == k:
          break
  return np.asarray(chosen, np.int64)


def ranking_negatives(ratings: UserRatings, catalogue: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Independent negatives for the validation and the test example of a user."""
  uid = ratings.user.user_id
  return (sample_negatives(ratings.item_ids, catalogue, k, user_rng(seed, _NEGATIVES_VAL, uid)),
          sample_negatives(ratings.item_ids, catalogue, k, user_rng(seed, _NEGATIVES_TEST, uid)))


def select_heldout_users(user_ids: np.ndarray, fraction: float, seed: int) -> set[int]:
  """A seeded `fraction` of users (rounded) whose data never enters training."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'heldout fraction must be in [0, 1), got {fraction}')
  count = int(round(fraction * len(user_ids)))
  rng = user_rng(seed, _HELDOUT, 0)
  return set(rng.choice(np.sort(user_ids), size=count, replace=False).tolist())

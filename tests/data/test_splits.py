"""Split protocol: leave-one-out order, negatives, random split, held-out users."""

import numpy as np
import pytest

from tff_rec.data import splits
from tff_rec.data.records import DataError, User, UserRatings


def _user(items, timestamps, user_id=7):
  n = len(items)
  return UserRatings(User(user_id, 30, 'F', 'writer'), np.asarray(items, np.int64),
                     np.full(n, 4.0, np.float32), np.asarray(timestamps, np.int64))


def test_leave_one_out_uses_time_then_largest_item():
  # Items 3, 5 and 9 share the latest timestamp 300: the largest, 9, is the
  # test item and the next largest, 5, the validation item.
  ratings = _user([2, 5, 9, 3, 8], [100, 300, 300, 300, 200])
  split = splits.leave_one_out(ratings)
  # Order by (timestamp, item): 2@100, 8@200, 3@300, 5@300, 9@300.
  assert ratings.item_ids[split.test].tolist() == [9]
  assert ratings.item_ids[split.val].tolist() == [5]
  assert sorted(ratings.item_ids[split.train].tolist()) == [2, 3, 8]


@pytest.mark.parametrize('n, sizes', [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1))])
def test_leave_one_out_tiny_users(n, sizes):
  split = splits.leave_one_out(_user(range(1, n + 1), range(n)))
  assert (len(split.train), len(split.val), len(split.test)) == sizes


def test_random_split_sizes_and_partition():
  ratings = _user(range(1, 21), range(20))
  split = splits.random_split(ratings, seed=0)
  assert (len(split.train), len(split.val), len(split.test)) == (16, 2, 2)  # 80/10/10 of 20.
  together = np.concatenate([split.train, split.val, split.test])
  assert sorted(together.tolist()) == list(range(20))
  again = splits.random_split(ratings, seed=0)
  assert split.test.tolist() == again.test.tolist()
  assert splits.random_split(ratings, seed=1).train.tolist() != split.train.tolist()


def test_random_split_keeps_a_train_rating():
  split = splits.random_split(_user([1, 2], [0, 1]), seed=0)
  assert (len(split.train), len(split.val), len(split.test)) == (2, 0, 0)


@pytest.mark.parametrize('num_items', [150, 5000])  # Dense (explicit complement) and sparse (rejection).
def test_negatives_are_distinct_unrated_and_seeded(num_items):
  catalogue = np.arange(1, num_items + 1)
  rated = np.arange(1, 41)
  negatives = splits.sample_negatives(rated, catalogue, 99, np.random.default_rng(3))
  assert len(negatives) == 99 == len(set(negatives.tolist()))
  assert not set(negatives.tolist()) & set(rated.tolist())
  assert set(negatives.tolist()) <= set(catalogue.tolist())
  again = splits.sample_negatives(rated, catalogue, 99, np.random.default_rng(3))
  assert negatives.tolist() == again.tolist()


def test_negatives_impossible_is_a_clear_error():
  with pytest.raises(DataError, match='only 10 of 50 items are unrated'):
    splits.sample_negatives(np.arange(1, 41), np.arange(1, 51), 99, np.random.default_rng(0))


def test_val_and_test_negatives_differ():
  ratings = _user(range(1, 21), range(20))
  val, test = splits.ranking_negatives(ratings, np.arange(1, 1001), 99, seed=0)
  assert val.tolist() != test.tolist()


def test_heldout_users_count_and_seed():
  users = np.arange(1, 944)
  heldout = splits.select_heldout_users(users, 0.1, seed=0)
  assert len(heldout) == 94  # round(0.1 * 943)
  assert heldout == splits.select_heldout_users(users[::-1], 0.1, seed=0)  # Order-independent.
  assert heldout != splits.select_heldout_users(users, 0.1, seed=1)
  with pytest.raises(ValueError, match='heldout fraction'):
    splits.select_heldout_users(users, 1.0, seed=0)

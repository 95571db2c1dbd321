"""Plain in-memory records shared by every dataset source."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Optional

import numpy as np

# Without demographics (MovieLens-10M+, interaction logs) a user's occupation is the pseudo-group
# `group_NN`, NN = user id mod PSEUDO_GROUPS, which is what the cross-silo view deals to platforms.
PSEUDO_GROUPS = 21


_TITLE_YEAR = re.compile(r'\((\d{4})\)\s*$')


def title_year(title: str) -> int:
  """The release year a title ends with, `Heat (1995)` -> 1995; 0 if it has none."""
  match = _TITLE_YEAR.search(title)
  return int(match.group(1)) if match else 0


class DataError(ValueError):
  """Bad input data; the message names the file, line and problem."""


@dataclasses.dataclass(frozen=True)
class Item:
  item_id: int
  title: str
  year: int  # 0 when unknown.
  genres: tuple[int, ...]  # Indices into the dataset's genre vocabulary (schema.GENRES for MovieLens).
  name: Optional[str] = None  # The id as stored (client-facing); None: str(item_id).

  @property
  def key(self) -> str:
    return str(self.item_id) if self.name is None else self.name


@dataclasses.dataclass(frozen=True)
class User:
  user_id: int
  age: int
  gender: str
  occupation: str
  name: Optional[str] = None  # The id as stored (the client id); None: str(user_id).

  @property
  def key(self) -> str:
    return str(self.user_id) if self.name is None else self.name


def anonymous_users(user_ids: np.ndarray, names: Optional[Sequence[str]] = None) -> dict[int, User]:
  """Users without demographics: age 0, no gender, the pseudo-group occupation (see PSEUDO_GROUPS)."""
  return {int(u): User(int(u), 0, '', f'group_{int(u) % PSEUDO_GROUPS:02d}',
                       None if names is None else str(names[int(u)]))
          for u in np.unique(user_ids)}


@dataclasses.dataclass(frozen=True)
class UserRatings:
  """All ratings of one user, in any order."""

  user: User
  item_ids: np.ndarray  # int64 [n]
  ratings: np.ndarray  # float32 [n]
  timestamps: np.ndarray  # int64 [n]

  def __len__(self) -> int:
    return len(self.item_ids)


@dataclasses.dataclass(frozen=True)
class Ratings:
  """A parsed dataset: users, the item catalogue, and every rating as parallel arrays grouped by user."""

  users: dict[int, User]
  items: dict[int, Item]
  # Parallel arrays over all ratings, sorted by (user, item).
  user_ids: np.ndarray
  item_ids: np.ndarray
  ratings: np.ndarray
  timestamps: np.ndarray
  source: str

  def per_user(self) -> Iterator[UserRatings]:
    """Yields each user's ratings, in increasing user id."""
    bounds = np.flatnonzero(np.diff(self.user_ids)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(self.user_ids)]):
      yield UserRatings(
          self.users[int(self.user_ids[lo])],
          self.item_ids[lo:hi],
          self.ratings[lo:hi],
          self.timestamps[lo:hi],
      )

"""Plain in-memory records shared by every dataset source."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
  """Bad input data; the message names the file, line and problem."""


@dataclasses.dataclass(frozen=True)
class Item:
  item_id: int
  title: str
  year: int  # 0 when unknown.
  genres: tuple[int, ...]  # Indices into schema.GENRES.


@dataclasses.dataclass(frozen=True)
class User:
  user_id: int
  age: int
  gender: str
  occupation: str


@dataclasses.dataclass(frozen=True)
class UserRatings:
  """All ratings of one user, in any order."""

  user: User
  item_ids: np.ndarray  # int64 [n]
  ratings: np.ndarray  # float32 [n]
  timestamps: np.ndarray  # int64 [n]

  def __len__(self) -> int:
    return len(self.item_ids)

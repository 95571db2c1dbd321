"""Cross-silo view: users grouped into platforms by occupation.

The rule (stated, deterministic, deliberately non-uniform in who is where):
occupations are taken in decreasing order of user count (ties by name) and
each is assigned whole to the platform with the fewest users so far (ties to
the lowest platform index). Every occupation lives on exactly one platform, so
platforms differ in demographics and taste (a non-IID split), while their sizes
stay as balanced as whole occupations allow. With MovieLens-100K and 5
platforms, platform 0 is the students.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence


def platform_id(index: int) -> str:
  return f'platform_{index}'


def assign_platforms(occupation_counts: Mapping[str, float], num_platforms: int) -> dict[str, str]:
  """Maps each occupation to a platform id.

  Args:
    occupation_counts: Users (or expected users) per occupation.
    num_platforms: Number of platforms; at most the number of occupations.

  Returns:
    occupation -> platform id (`platform_0` ... `platform_{n-1}`).

  Raises:
    ValueError: If num_platforms < 1 or exceeds the number of occupations.
  """
  if num_platforms < 1:
    raise ValueError(f'num_platforms must be >= 1, got {num_platforms}')
  if num_platforms > len(occupation_counts):
    raise ValueError(
        f'num_platforms={num_platforms} exceeds the {len(occupation_counts)} occupations '
        'that platforms are built from')
  sizes = [0.0] * num_platforms
  assignment = {}
  for occupation, count in sorted(occupation_counts.items(), key=lambda kv: (-kv[1], kv[0])):
    target = min(range(num_platforms), key=lambda p: (sizes[p], p))
    sizes[target] += count
    assignment[occupation] = platform_id(target)
  return assignment


def members(db_path: str, user_ids: Sequence[str]) -> dict[str, list[str]]:
  """platform id -> its users among `user_ids` (sorted), from the database's `users` table."""
  wanted = set(user_ids)
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    rows = con.execute('SELECT user_id, platform FROM users ORDER BY user_id').fetchall()
  finally:
    con.close()
  out: dict[str, list[str]] = {}
  for user, platform in rows:
    if user in wanted:
      out.setdefault(platform, []).append(user)
  return out

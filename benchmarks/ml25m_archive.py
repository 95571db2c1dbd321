"""A generated archive in GroupLens' ml-25m.zip layout, of any size: the input of `benchmarks.prepare_scale` (no
flags here, so that tests import it)."""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

ML25M_USERS, ML25M_MOVIES, ML25M_RATINGS = 162_541, 59_047, 25_000_095


def write_ml25m_archive(path: str, ratings: int, seed: int = 0) -> dict[str, int]:
  """Writes a zip in ml-25m.zip's layout with `ratings` generated ratings; returns its sizes.

  Users and movies scale with `ratings` from MovieLens-25M's counts; each user rates between 20 and all but 100
  of the catalogue's movies, distinct (an arithmetic progression modulo the catalogue with a stride coprime to it), with
  log-normal activity as MovieLens has.
  """
  rng = np.random.default_rng(seed)
  scale = ratings / ML25M_RATINGS
  movies = max(300, round(ML25M_MOVIES * scale))
  cap = movies - 100  # Leaves the 99 negatives the ranking protocol samples.
  users = max(round(ML25M_USERS * scale), math.ceil(ratings / cap) + 1)
  activity = rng.lognormal(0.0, 1.0, users)
  counts = np.clip(np.floor(20 + activity / activity.sum() * (ratings - 20 * users)), 20, cap).astype(np.int64)
  while diff := ratings - int(counts.sum()):  # Exactly `ratings`: the clip's and the rounding's remainder.
    room = np.flatnonzero((cap - counts if diff > 0 else counts - 20) > 0)[:abs(diff)]
    counts[room] += 1 if diff > 0 else -1
  starts = rng.integers(0, movies, users)
  strides = rng.integers(1, movies, users)
  while (bad := np.gcd(strides, movies) != 1).any():
    strides[bad] = rng.integers(1, movies, int(bad.sum()))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED, allowZip64=True) as z:
    with z.open('ml-25m/ratings.csv', 'w', force_zip64=True) as f:
      f.write(b'userId,movieId,rating,timestamp\n')
      lo = 0
      while lo < users:  # About a million ratings a chunk.
        hi = lo + max(1, int(np.searchsorted(np.cumsum(counts[lo:]), 1_000_000)))
        user = np.repeat(np.arange(lo, hi), counts[lo:hi])
        position = np.arange(len(user)) - np.repeat(np.cumsum(counts[lo:hi]) - counts[lo:hi], counts[lo:hi])
        movie = (starts[user] + position * strides[user]) % movies + 1
        stars = rng.integers(1, 11, len(user)) / 2
        when = 789_652_009 + rng.integers(0, 10**9, len(user))
        lines = '\n'.join(f'{u},{m},{s:.1f},{t}' for u, m, s, t in
                          zip((user + 1).tolist(), movie.tolist(), stars.tolist(), when.tolist()))
        f.write(lines.encode() + b'\n')
        lo = hi
    genres = ('Action', 'Comedy', 'Drama', 'Romance', 'Thriller', 'Children', 'Sci-Fi', '(no genres listed)')
    z.writestr('ml-25m/movies.csv', 'movieId,title,genres\n' + ''.join(
        f'{m},"Movie {m}, The ({1950 + m % 70})",{genres[m % 8]}|{genres[(m // 8) % 8]}\n'
        for m in range(1, movies + 1)))
  return {'ratings': int(counts.sum()), 'users': users, 'movies': movies}

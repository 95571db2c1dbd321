"""MovieLens-100K and -1M parsing, validation and checksums."""

import dataclasses
import hashlib
import os
import shutil
import zipfile

import numpy as np
import pytest

from tff_rec.data import movielens
from tff_rec.data.records import DataError



def _flags(*genres):
  return '|'.join('1' if g in genres else '0' for g in range(19))


def _grouplens_zip(path, data_lines, items=None, users=None):
  """A tiny archive in the official GroupLens ml-100k.zip layout."""
  items = items or [f'1|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3)}',  # Animation.
                    f'2|unknown||||{_flags(0)}']
  users = users or ['1|24|M|technician|85711', '2|53|F|other|94043']
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('ml-100k/u.data', ''.join(line + '\n' for line in data_lines))
    z.writestr('ml-100k/u.item', ''.join(line + '\n' for line in items))
    z.writestr('ml-100k/u.user', ''.join(line + '\n' for line in users))
  return str(path)


def test_grouplens_layout_parses(tmp_path):
  path = _grouplens_zip(tmp_path / 'ml.zip', ['2\t1\t5\t900', '1\t2\t3\t800', '1\t1\t4\t700'])
  ml = movielens.read_archive(path, verify=False)
  assert ml.source == 'grouplens'
  assert ml.user_ids.tolist() == [1, 1, 2]  # Sorted by (user, item).
  assert ml.item_ids.tolist() == [1, 2, 1]
  assert ml.ratings.tolist() == [4.0, 3.0, 5.0]
  assert ml.items[1].year == 1995 and ml.items[1].genres == (3,)  # Animation.
  assert ml.items[2].year == 0 and ml.items[2].genres == (0,)  # unknown.
  assert ml.users[2].occupation == 'other'
  assert [len(u) for u in ml.per_user()] == [2, 1]


@pytest.mark.parametrize('bad_line, problem', [
    ('1\t2\t3', 'expected 4 fields'),
    ('1\tx\t3\t800', "item id 'x' is not an integer"),
    ('1\t2\tgood\t800', "rating 'good' is not a number"),
    ('1\t2\t6\t800', 'rating 6 is outside 1-5'),
    ('1\t2\t0\t800', 'rating 0 is outside 1-5'),
    ('1\t1\t2\t900', 'duplicate rating of item 1 by user 1 (first on line 1)'),
])
def test_malformed_ratings_name_file_line_and_problem(tmp_path, bad_line, problem):
  path = _grouplens_zip(tmp_path / 'ml.zip', ['1\t1\t4\t700', bad_line])
  with pytest.raises(DataError) as error:
    movielens.read_archive(path, verify=False)
  assert f'{path}:ml-100k/u.data:2: {problem}' in str(error.value)


def test_ratings_of_unknown_items_are_an_error(tmp_path):
  path = _grouplens_zip(tmp_path / 'ml.zip', ['1\t3\t4\t700'])
  with pytest.raises(DataError, match=r'unknown users \[\] or items \[3\]'):
    movielens.read_archive(path, verify=False)


def test_not_a_zip_is_a_clear_error(tmp_path):
  path = tmp_path / 'ml.zip'
  path.write_text('hello')
  with pytest.raises(DataError, match='not a readable zip archive'):
    movielens.read_archive(str(path))


def test_checksum_of_canonical_form():
  digest = movielens.ratings_sha256(np.array([1, 1]), np.array([5, 2]), np.array([3.0, 4.0]), np.array([600, 700]))
  # The canonical text: integer fields, sorted by user then item.
  assert digest == hashlib.sha256(b'1\t2\t4\t700\n1\t5\t3\t600\n').hexdigest()


def test_real_archive_verifies(movielens_archive):
  ml = movielens.read_archive(movielens_archive)
  assert len(ml.ratings) == 100_000
  assert len(ml.users) == 943 and len(ml.items) == 1682


def test_corrupted_copy_fails_the_checksum(movielens_archive, tmp_path):
  corrupted = tmp_path / os.path.basename(movielens_archive)
  with zipfile.ZipFile(movielens_archive) as src, zipfile.ZipFile(corrupted, 'w') as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename.endswith(('ml-100k.inter', 'u.data')):
        lines = data.decode('latin-1').splitlines(keepends=True)
        user, item, rating, ts = lines[5].rstrip('\n').split('\t')
        lines[5] = f'{user}\t{item}\t{6 - int(rating) if rating != "3" else 4}\t{ts}\n'  # One rating changed.
        data = ''.join(lines).encode('latin-1')
      dst.writestr(info, data)
  with pytest.raises(DataError, match='checksum mismatch'):
    movielens.read_archive(str(corrupted))


def test_fetch_uses_the_cache_without_network(tmp_path, movielens_archive, monkeypatch):
  cached = tmp_path / os.path.basename(movielens_archive)
  shutil.copy(movielens_archive, cached)

  def no_network(*args, **kwargs):
    raise AssertionError('fetched although a cached archive exists')

  monkeypatch.setattr(movielens, '_download_grouplens', no_network)
  monkeypatch.setattr(movielens, '_download_recbole', no_network)
  assert movielens.fetch(str(tmp_path)) == str(cached)


def ml1m_zip(path, users: int = 6, movies: int = 8, occupation: str = '12'):
  """A small archive in GroupLens' ml-1m.zip layout: every user rates movies 1..5 and one more (6 ratings each)."""
  ratings = [f'{u}::{m}::{1 + (u + m) % 5}::{978300000 + 10 * u + m}' for u in range(1, users + 1)
             for m in sorted({1, 2, 3, 4, 5, 6 + u % (movies - 5)})]
  titles = ['Toy Story (1995)::Animation|Children\'s|Comedy', 'Jumanji (1995)::Adventure|Fantasy',
            'Heat (1995)::Action|Crime|Thriller', 'Sabrina (1954)::Romance', 'Nixon (1995)::Drama',
            'Casino (1995)::Drama|Thriller', 'Persuasion (1995)::Romance', 'Big Bully (1996)::Comedy|Drama']
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('ml-1m/ratings.dat', ''.join(line + '\n' for line in ratings))
    z.writestr('ml-1m/movies.dat', ''.join(f'{m}::{titles[(m - 1) % 8]}\n' for m in range(1, movies + 1)))
    z.writestr('ml-1m/users.dat', ''.join(f'{u}::{"MF"[u % 2]}::{(18, 25, 35)[u % 3]}::{occupation}::55455\n'
                                         for u in range(1, users + 1)))
  return str(path)


def test_movielens_1m_layout_parses(tmp_path):
  ml = movielens.read_release(ml1m_zip(tmp_path / 'ml-1m.zip'), movielens.ML1M, verify=False)
  assert len(ml.user_ids) == 36 and ml.user_ids.tolist() == sorted(ml.user_ids.tolist())
  assert ml.ratings.min() >= 1 and ml.ratings.max() <= 5
  toy = ml.items[1]
  assert toy.year == 1995 and toy.genres == tuple(sorted(movielens._GENRE_INDEX[g] for g in
                                                          ('Animation', "Children's", 'Comedy')))
  assert ml.items[4].year == 1954
  assert ml.users[1] == movielens.User(1, 25, 'F', 'programmer')  # Occupation 12 (README.txt's codes).
  assert [len(u) for u in ml.per_user()] == [6] * 6


@pytest.mark.parametrize('occupation, problem', [('21', 'occupation code 21 is not one of 0-20'),
                                                 ('x', "occupation 'x' is not an integer")])
def test_movielens_1m_bad_users_name_file_and_line(tmp_path, occupation, problem):
  path = ml1m_zip(tmp_path / 'ml-1m.zip', occupation=occupation)
  with pytest.raises(DataError, match=f'ml-1m/users.dat:1: {problem}'):
    movielens.read_release(path, movielens.ML1M, verify=False)


def test_movielens_1m_is_verified_by_md5_and_sizes(tmp_path, monkeypatch):
  path = ml1m_zip(tmp_path / 'ml-1m.zip')
  with pytest.raises(DataError, match="md5 [0-9a-f]{32} is not ml-1m.zip's \\(c4d9eecfca2ab87c1945afe126590906"):
    movielens.read_release(path, movielens.ML1M)
  release = movielens.RELEASES[movielens.ML1M]
  monkeypatch.setitem(movielens.RELEASES, movielens.ML1M, dataclasses.replace(release, md5=movielens.file_md5(path)))
  with pytest.raises(DataError, match=r"movielens_1m has \{'ratings': 1000209, .* this archive \{'ratings': 36"):
    movielens.read_release(path, movielens.ML1M)  # The right checksum, the wrong sizes.


def test_movielens_1m_is_fetched_from_the_cache_or_named_when_unreachable(tmp_path):
  with pytest.raises(DataError, match='download https://files.grouplens.org/datasets/movielens/ml-1m.zip and pass '
                                      '--raw_archive=PATH, or put it at .*ml-1m.zip'):
    movielens.fetch_release(str(tmp_path), movielens.ML1M, timeout_s=0)
  cached = ml1m_zip(tmp_path / 'ml-1m.zip')
  assert movielens.fetch_release(str(tmp_path), movielens.ML1M, timeout_s=0) == cached


def release_zip(path, dataset: str, users: int = 6, movies: int = 120, bad_row: str | None = None):
  """A small archive in a 10M / 20M / 25M layout: no users file, half-star ratings, 10M+ genre names."""
  release = movielens.RELEASES[dataset]
  csv_layout = release.ratings.endswith('.csv')
  rows = [(u, m, 0.5 + (u + m) % 10 / 2, 1100000000 + 10 * u + m) for u in range(1, users + 1)
          for m in sorted({1, 2, 3, 4, 5, 6 + u % (movies - 5)})]
  titles = ['"American President, The (1995)"', 'Toy Story (1995)', 'Heat (1995)', 'Planet Earth (2006)',
            'Nixon (1995)', 'Untitled']
  genres = ['Comedy|Drama|Romance', 'Adventure|Animation|Children|Comedy|Fantasy', 'Action|Crime|Thriller',
            'Documentary|IMAX', 'Drama', '(no genres listed)']
  if csv_layout:
    ratings = ['userId,movieId,rating,timestamp'] + [f'{u},{m},{r},{t}' for u, m, r, t in rows]
    movie_lines = ['movieId,title,genres'] + [f'{m},{titles[(m - 1) % 6]},{genres[(m - 1) % 6]}'
                                              for m in range(1, movies + 1)]
  else:
    ratings = [f'{u}::{m}::{r}::{t}' for u, m, r, t in rows]
    movie_lines = [f'{m}::{titles[(m - 1) % 6].strip(chr(34))}::{genres[(m - 1) % 6]}' for m in range(1, movies + 1)]
  if bad_row:
    ratings.append(bad_row)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr(f'{release.folder}/{release.ratings}', ''.join(line + '\n' for line in ratings))
    z.writestr(f'{release.folder}/{release.movies}', ''.join(line + '\n' for line in movie_lines))
  return str(path)


@pytest.mark.parametrize('dataset', [movielens.ML10M, movielens.ML20M, movielens.ML25M])
def test_larger_releases_parse_half_stars_and_their_genre_names(tmp_path, dataset):
  ml = movielens.read_release(release_zip(tmp_path / 'ml.zip', dataset), dataset, verify=False)
  assert len(ml.user_ids) == 36 and ml.ratings.min() == 0.5 and 4.5 in ml.ratings.tolist()
  assert ml.items[1].title == 'American President, The (1995)' and ml.items[1].year == 1995  # A quoted comma.
  index = movielens._GENRE_INDEX
  assert ml.items[2].genres == tuple(sorted(index[g] for g in ('Adventure', 'Animation', "Children's", 'Comedy',
                                                               'Fantasy')))
  assert ml.items[4].genres == (index['Documentary'],) and ml.items[6].genres == () and ml.items[6].year == 0
  assert ml.users[1] == movielens.User(1, 0, '', 'group_01')  # No demographics: a pseudo-group by id.


@pytest.mark.parametrize('bad_row, problem', [('7,1,6.0,1100000000', ':38: rating 6 is outside 0.5-5'),
                                              ('1,1,3.0,1100000000', ': duplicate rating of item 1 by user 1'),
                                              ('7,x,3.0,1100000000', ':2-38: .*expected user, item, rating')])
def test_larger_releases_name_a_bad_line(tmp_path, bad_row, problem):
  path = release_zip(tmp_path / 'ml.zip', movielens.ML20M, bad_row=bad_row)  # Line 38: after the header and 36.
  with pytest.raises(DataError, match=f'ml-20m/ratings.csv{problem}'):
    movielens.read_release(path, movielens.ML20M, verify=False)


def test_larger_releases_are_read_in_chunks_alike(tmp_path):
  path = release_zip(tmp_path / 'ml.zip', movielens.ML10M)
  whole, chunked = [movielens._parse_ratings_fast(zipfile.ZipFile(path).open('ml-10M100K/ratings.dat'), 'f', '::',
                                                  chunk_lines=n) for n in (1000, 7)]
  assert all(np.array_equal(a, b) for a, b in zip(whole, chunked)) and len(whole[0]) == 36

"""Any interaction log as a tff-rec dataset: a CSV, TSV or Parquet file of (user, item, rating or count, timestamp).

What `prepare_data --dataset=interactions` does, in this order (docs/data.md):
  1. read the mapped columns (`--columns`: role=column; user and item required, rating, count and timestamp
     optional); ids may be numbers or strings and are kept as written;
  2. implicit feedback (no rating column): rows with a count <= 0 are dropped, and every remaining (user, item)
     pair is one positive with label 1.0;
  3. duplicate (user, item) pairs are merged: the latest (largest timestamp; on a tie, the later line) is kept;
  4. k-core filtering: items with fewer than `min_item_interactions` users, then users with fewer than
     `min_user_interactions` items, are removed, repeated until neither removes anything;
  5. without a timestamp, each user's interactions get a seeded random order (the rank of a uniform key per
     interaction, drawn in (user, item) order from the seed), so leave-one-out holds out a random interaction
     instead of the latest.
Item metadata (optional, the same file formats, `--item_columns`: item, title, categories, year) gives titles,
years and categories; categories fill the 19 genre slots of the schema: the 18 most frequent (by items; ties by
name) each get one, the rest share slot 0, `other`.

Reading uses pyarrow's CSV and Parquet readers; a value pyarrow cannot read is located again line by line with
Python's csv module, so the error names the file, line and problem.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from tff_rec.data import schema
from tff_rec.data.records import DataError, Item, Ratings, anonymous_users, title_year

ROLES = ('user', 'item', 'rating', 'count', 'timestamp')
ITEM_ROLES = ('item', 'title', 'categories', 'year')
OTHER_CATEGORY = 'other'
EXPLICIT, IMPLICIT = 'explicit', 'implicit'
_ORDER_PURPOSE = 5  # Seed stream of the no-timestamp order (splits.py uses 1-4).


def parse_columns(text: str, roles: Sequence[str], flag: str = '--columns') -> dict[str, str]:
  """`role=column,role=column` -> {role: column}; a role not given maps to the column of its own name."""
  mapping = {}
  for part in filter(None, (p.strip() for p in text.split(','))):
    role, sep, column = part.partition('=')
    role, column = role.strip(), column.strip()
    if not sep or not column:
      raise DataError(f'{flag}: {part!r} is not role=column (roles: {", ".join(roles)})')
    if role not in roles:
      raise DataError(f'{flag}: unknown role {role!r} (roles: {", ".join(roles)})')
    mapping[role] = column
  return mapping


@dataclasses.dataclass(frozen=True)
class InteractionsSpec:
  """Where an interaction log is and how to read it.

  Attributes:
    path: The interactions file (.csv, .tsv/.tab/.txt or .parquet).
    columns: role -> column name (`parse_columns`); an unmapped role uses the column of its name, if any.
    delimiter: CSV/TSV field separator; None: tab for .tsv/.tab, else comma.
    min_user_interactions: k-core: the fewest items a user keeps (3: leave-one-out's train, validation, test).
    min_item_interactions: k-core: the fewest users an item keeps.
    item_metadata: Optional item file (same formats): titles, categories, years.
    item_columns: role -> column of the item file (roles `ITEM_ROLES`).
    category_delimiter: Separator of several categories in one field.
  """

  path: str
  columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
  delimiter: Optional[str] = None
  min_user_interactions: int = 3
  min_item_interactions: int = 1
  item_metadata: Optional[str] = None
  item_columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
  category_delimiter: str = '|'

  def validate(self) -> None:
    if self.min_user_interactions < 1 or self.min_item_interactions < 1:
      raise DataError(f'--min_user_interactions and --min_item_interactions must be >= 1, got '
                      f'{self.min_user_interactions}, {self.min_item_interactions}')
    if self.delimiter is not None and len(self.delimiter) != 1:
      raise DataError(f'--delimiter must be one character, got {self.delimiter!r}')


@dataclasses.dataclass(frozen=True)
class Interactions:
  """A read interaction log: the ratings and what the reading decided."""

  data: Ratings
  feedback: str  # EXPLICIT (a rating column) or IMPLICIT (labels 1.0).
  temporal: bool  # Whether the order is the file's timestamps (else seeded random, see the module docstring).
  categories: tuple[str, ...]  # The genre vocabulary (schema.NUM_GENRES slots).
  report: dict  # Rows read, dropped, merged and filtered.


def _is_parquet(path: str) -> bool:
  return path.lower().endswith('.parquet')


def _delimiter(path: str, delimiter: Optional[str]) -> str:
  if delimiter is not None:
    return delimiter
  return '\t' if path.lower().endswith(('.tsv', '.tab')) else ','


def _header(path: str, delimiter: str) -> list[str]:
  if _is_parquet(path):
    return pq.read_schema(path).names
  with open(path, newline='', encoding='utf-8') as f:
    return next(csv.reader(f, delimiter=delimiter), [])


def _resolve(path: str, header: Sequence[str], mapping: Mapping[str, str], roles: Sequence[str],
             required: Sequence[str], flag: str) -> dict[str, str]:
  """role -> column present in the file: mapped ones must exist; unmapped roles match their own name."""
  resolved = {}
  for role in roles:
    if role in mapping:
      if mapping[role] not in header:
        raise DataError(f'{path}: {flag} maps {role} to column {mapping[role]!r}, which the file does not have '
                        f'(columns: {", ".join(header)})')
      resolved[role] = mapping[role]
    elif role in header:
      resolved[role] = role
  missing = [r for r in required if r not in resolved]
  if missing:
    raise DataError(f'{path}: no {" or ".join(missing)} column (columns: {", ".join(header)}); map one with '
                    f'{flag}={missing[0]}=NAME')
  return resolved


def _line_problem(path: str, delimiter: str, checks: Mapping[str, tuple[str, callable]]) -> Optional[str]:
  """The first line whose field count or a checked value is wrong, as 'file:line: problem' (slow; only after the
  fast reader failed)."""
  with open(path, newline='', encoding='utf-8', errors='replace') as f:
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, [])
    index = {column: header.index(column) for column in checks}
    for row in reader:
      where = f'{path}:{reader.line_num}'
      if len(row) != len(header):
        return f'{where}: expected {len(header)} fields ({", ".join(header)}), got {len(row)}: {row!r}'
      for column, (what, check) in checks.items():
        value = row[index[column]]
        if not check(value):
          return f'{where}: {column} {value!r} is not {what}'
  return None


def _is_number(value: str) -> bool:
  try:
    return np.isfinite(float(value))
  except ValueError:
    return False


def _is_timestamp(value: str) -> bool:
  try:
    int(value)
    return True
  except ValueError:
    return bool(re.fullmatch(r'\d{4}-\d\d-\d\d([ T]\d\d:\d\d(:\d\d(\.\d+)?)?)?(Z|[+-]\d\d:?\d\d)?', value.strip()))


_CHECKS = {'user': ('an id', lambda v: v != ''), 'item': ('an id', lambda v: v != ''),
           'rating': ('a finite number', _is_number), 'count': ('a finite number', _is_number),
           'timestamp': ('integer seconds or an ISO 8601 date', _is_timestamp),
           'title': ('text', lambda v: True), 'categories': ('text', lambda v: True),
           'year': ('an integer year', lambda v: v == '' or v.strip().isdigit())}


def _read(path: str, resolved: Mapping[str, str], delimiter: str, types: Mapping[str, pa.DataType]) -> pa.Table:
  """The resolved columns as a table whose column names are roles."""
  columns = list(resolved.values())
  try:
    if _is_parquet(path):
      table = pq.read_table(path, columns=columns)
    else:
      table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter),
                              convert_options=pa_csv.ConvertOptions(
                                  include_columns=columns,
                                  column_types={resolved[r]: t for r, t in types.items() if r in resolved},
                                  strings_can_be_null=False))
  except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as e:
    if not _is_parquet(path) and os.path.isfile(path):
      problem = _line_problem(path, delimiter, {resolved[r]: _CHECKS[r] for r in resolved})
      if problem:
        raise DataError(problem) from None
    raise DataError(f'{path}: cannot read ({e})') from None
  return pa.table([table.column(c) for c in columns], names=list(resolved))


def _where(path: str, row: int) -> str:
  """A data row's position: its line (header + 1-based) in a CSV file, its row in a Parquet file."""
  return f'{path}: row {row + 1}' if _is_parquet(path) else f'{path}:{row + 2}'


def _ids(path: str, column: pa.ChunkedArray, role: str) -> tuple[np.ndarray, np.ndarray]:
  """Dense int64 ids (the rank of each id in sorted order) and the sorted id strings."""
  if column.null_count:
    row = int(pc.index(pc.is_null(column), True).as_py())
    raise DataError(f'{_where(path, row)}: no {role} id')
  if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(
      column.type)):
    raise DataError(f'{path}: {role} ids must be integers or strings, the column is {column.type}')
  if pa.types.is_integer(column.type):
    values = column.to_numpy()
    names, dense = np.unique(values, return_inverse=True)
    return dense.astype(np.int64), names.astype(str)
  blank = pc.index(pc.utf8_trim_whitespace(column), '').as_py()
  if blank >= 0:
    raise DataError(f'{_where(path, int(blank))}: no {role} id')
  encoded = column.combine_chunks().dictionary_encode()
  dictionary = encoded.dictionary.to_numpy(zero_copy_only=False).astype(str)
  order = np.argsort(dictionary, kind='stable')
  rank = np.empty(len(order), np.int64)
  rank[order] = np.arange(len(order))
  return rank[encoded.indices.to_numpy()], dictionary[order]


def _numbers(path: str, table: pa.Table, role: str, name: str, delimiter: str) -> Optional[np.ndarray]:
  """The `role` column (file column `name`) as finite float64s, or None if it is not mapped."""
  if role not in table.column_names:
    return None
  column = table.column(role)
  if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
    column = pc.cast(pc.cast(column, pa.timestamp('s')), pa.int64())
  if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
    problem = None if _is_parquet(path) else _line_problem(path, delimiter, {name: _CHECKS[role]})
    raise DataError(problem or f'{path}: the {role} column must be numbers{" or dates" if role == "timestamp" else ""}, '
                    f'it is {column.type}')
  values = column.to_numpy(zero_copy_only=False).astype(np.float64)
  bad = np.flatnonzero(~np.isfinite(values))
  if len(bad):
    raise DataError(f'{_where(path, int(bad[0]))}: {role} is missing or not a finite number')
  return values


def _k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
  """The mask of the rows that survive repeated item-then-user filtering."""
  keep = np.ones(len(users), bool)
  while True:
    item_counts = np.bincount(items[keep], minlength=items.max() + 1 if len(items) else 0)
    drop = keep & (item_counts[items] < min_item)
    keep &= ~drop
    user_counts = np.bincount(users[keep], minlength=users.max() + 1 if len(users) else 0)
    drop_users = keep & (user_counts[users] < min_user)
    keep &= ~drop_users
    if not drop.any() and not drop_users.any():
      return keep


def _categories(item_categories: Mapping[int, Sequence[str]]) -> tuple[str, ...]:
  counts = collections.Counter(c for cats in item_categories.values() for c in set(cats))
  counts.pop(OTHER_CATEGORY, None)
  top = sorted(counts, key=lambda c: (-counts[c], c))[:schema.NUM_GENRES - 1]
  return (OTHER_CATEGORY, *sorted(top))


def _items(spec: InteractionsSpec, names: np.ndarray) -> tuple[dict[int, Item], tuple[str, ...]]:
  """The catalogue (every item of `names`, by dense id) and its category vocabulary."""
  titles, years, categories = {}, {}, {}
  if spec.item_metadata:
    delimiter = _delimiter(spec.item_metadata, spec.delimiter)
    resolved = _resolve(spec.item_metadata, _header(spec.item_metadata, delimiter), spec.item_columns, ITEM_ROLES,
                        ['item'], '--item_columns')
    table = _read(spec.item_metadata, resolved, delimiter,
                  {'item': pa.string(), 'title': pa.string(), 'categories': pa.string(), 'year': pa.string()})
    index = {name: i for i, name in enumerate(names.tolist())}
    rows = {role: table.column(role).to_pylist() for role in table.column_names}
    for row, key in enumerate(rows['item']):
      key = str(key)
      if key not in index:
        continue  # Metadata of an item nobody interacted with (or one the k-core removed).
      i = index[key]
      if i in titles:
        raise DataError(f'{_where(spec.item_metadata, row)}: item {key!r} appears twice')
      titles[i] = str(rows['title'][row] or '') if 'title' in rows else ''
      year = str(rows['year'][row] or '').strip() if 'year' in rows else ''
      if year and not year.isdigit():
        raise DataError(f'{_where(spec.item_metadata, row)}: year {year!r} is not an integer')
      years[i] = int(year) if year else title_year(titles[i])
      field = str(rows['categories'][row] or '') if 'categories' in rows else ''
      categories[i] = [c.strip() for c in field.split(spec.category_delimiter) if c.strip()]
  vocabulary = _categories(categories)
  slot = {c: s for s, c in enumerate(vocabulary)}
  items = {}
  for i, key in enumerate(names.tolist()):
    genres = tuple(sorted({slot.get(c, 0) for c in categories.get(i, [])}))
    items[i] = Item(i, titles.get(i) or key, years.get(i, 0), genres, name=key)
  return items, vocabulary


def read(spec: InteractionsSpec, seed: int) -> Interactions:
  """Reads, cleans and filters an interaction log (the module docstring's steps).

  Raises:
    DataError: Naming the file (and line or row) of a missing column, an unreadable value, a missing id or a
      non-finite number, or saying that nothing survives the filters.
  """
  spec.validate()
  if not os.path.isfile(spec.path):
    raise DataError(f'{spec.path}: no such file (--interactions_file)')
  delimiter = _delimiter(spec.path, spec.delimiter)
  resolved = _resolve(spec.path, _header(spec.path, delimiter), spec.columns, ROLES, ['user', 'item'], '--columns')
  table = _read(spec.path, resolved, delimiter, {'user': pa.string(), 'item': pa.string(),
                                                 'rating': pa.float64(), 'count': pa.float64()})
  rows_read = table.num_rows
  if not rows_read:
    raise DataError(f'{spec.path}: no interactions')
  users, user_names = _ids(spec.path, table.column('user'), 'user')
  items, item_names = _ids(spec.path, table.column('item'), 'item')
  ratings, counts, times = (_numbers(spec.path, table, role, resolved.get(role, role), delimiter)
                            for role in ('rating', 'count', 'timestamp'))
  del table
  feedback = EXPLICIT if ratings is not None else IMPLICIT
  keep = np.ones(rows_read, bool) if counts is None or ratings is not None else counts > 0
  line = np.arange(rows_read)
  # Merge duplicates: sort by (user, item, timestamp, line) and keep each pair's last row.
  order = np.lexsort((line, times if times is not None else line, items, users))
  order = order[keep[order]]
  last = np.r_[(users[order][1:] != users[order][:-1]) | (items[order][1:] != items[order][:-1]), True]
  order = order[last]
  duplicates = int(keep.sum()) - len(order)
  users, items = users[order], items[order]
  ratings = ratings[order].astype(np.float32) if ratings is not None else np.ones(len(order), np.float32)
  times = times[order].astype(np.int64) if times is not None else None
  core = _k_core(users, items, spec.min_user_interactions, spec.min_item_interactions)
  users, items, ratings = users[core], items[core], ratings[core]
  if not len(users):
    raise DataError(f'{spec.path}: no interactions left after --min_user_interactions={spec.min_user_interactions}'
                    f' and --min_item_interactions={spec.min_item_interactions}')
  if times is None:  # A seeded random order per user: the rank of a uniform key within the user's rows.
    keys = np.random.default_rng([seed, _ORDER_PURPOSE]).random(len(users))
    by_user = np.lexsort((keys, users))
    starts = np.r_[0, np.flatnonzero(np.diff(users[by_user])) + 1]
    rank = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    times = np.empty(len(users), np.int64)
    times[by_user] = rank
  else:
    times = times[core]
  # Re-number the survivors densely (sorted ids), so ids and the catalogue hold only what is kept.
  kept_users, users = np.unique(users, return_inverse=True)
  kept_items, items = np.unique(items, return_inverse=True)
  user_names, item_names = user_names[kept_users], item_names[kept_items]
  users, items = users.astype(np.int64), items.astype(np.int64)  # Still sorted by (user, item), as merged.
  catalogue, vocabulary = _items(spec, item_names)
  per_user = np.bincount(users)
  if len(catalogue) - per_user.max() < schema.NUM_NEGATIVES:
    heavy = int(np.argmax(per_user))
    raise DataError(f'{spec.path}: user {user_names[heavy]!r} has {per_user.max()} of the {len(catalogue)} items; '
                    f'the ranking protocol needs {schema.NUM_NEGATIVES} unrated items per user as negatives')
  report = {'rows': rows_read, 'dropped_nonpositive_counts': int((~keep).sum()), 'merged_duplicates': duplicates,
            'removed_by_k_core': int((~core).sum()), 'interactions': int(len(users)), 'users': int(len(user_names)),
            'items': int(len(item_names))}
  data = Ratings(anonymous_users(users, user_names), catalogue, users, items, ratings, times, spec.path)
  return Interactions(data, feedback, resolved.get('timestamp') is not None, vocabulary, report)

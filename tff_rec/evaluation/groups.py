"""Which groups of users an evaluation reports separately, and each query's groups (plain numpy).

Differential privacy is known to cost under-represented groups more than the
rest (Bagdasaryan, Poursaeedi & Shmatikov, "Differential Privacy Has Disparate
Impact on Model Accuracy", NeurIPS 2019), and a recommender's accuracy is
known to differ by user activity and by the popularity of what is recommended.
So every evaluation can report its metrics by group:

- `activity`: quartiles of the user's number of training ratings (edges from
  the evaluated users' counts; the names give each quartile's range);
- `item_popularity`: the test item's raters among the training users
  (`POPULARITY_EDGES`: under 10, 10-29, 30-99, 100 and more); a query's group,
  so a user with several queries may count in several;
- `gender`, `age` (MovieLens-1M's buckets, `AGE_EDGES`), `occupation`: the
  data's demographics, where it has them;
- `platform`: the user's platform of the cross-silo view.

A group is a column of a 0/1 matrix per user [queries, groups]; a client adds
up its users' metric sums per column (`client_eval.ranking_sums` and
`rating_sums`), so what leaves it is, as before, sums: one per group instead of
one in all, keyed by attributes that are public (popularity, from counts the
server can compute as a federated sum) or declared by the client about itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
from collections.abc import Sequence

import numpy as np

ACTIVITY, POPULARITY, GENDER, AGE, OCCUPATION, PLATFORM = (
    'activity', 'item_popularity', 'gender', 'age', 'occupation', 'platform')
ATTRIBUTES = (ACTIVITY, POPULARITY, GENDER, AGE, OCCUPATION, PLATFORM)
POPULARITY_EDGES = (10, 30, 100)  # Raters in training: [0, 10), [10, 30), [30, 100), [100, inf).
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: under 18, 18-24, ..., 50-55, 56 and over.
MIN_USERS = 10  # A group with fewer users is reported, flagged: its metrics are noise.
PREFIX = 'by_'  # Metric keys: f'{PREFIX}{attribute}/{value}/{metric}'.
_PSEUDO_OCCUPATION = 'group_'  # `records.anonymous_users`' stand-in occupation: not a demographic.


@dataclasses.dataclass(frozen=True)
class UserAttributes:
  """The `users` table of a prepared `clients.sqlite`: each user's declared attributes ('' / 0 = none)."""

  age: dict[str, int]
  gender: dict[str, str]
  occupation: dict[str, str]
  platform: dict[str, str]

  def available(self) -> tuple[str, ...]:
    """The attributes this data has: activity and popularity always, the others where some user has a value."""
    has = {GENDER: any(self.gender.values()), AGE: any(a > 0 for a in self.age.values()),
           OCCUPATION: any(o and not o.startswith(_PSEUDO_OCCUPATION) for o in self.occupation.values()),
           PLATFORM: any(self.platform.values())}
    return tuple(a for a in ATTRIBUTES if has.get(a, True))


def read_users(db_path: str) -> UserAttributes:
  """The users table of `db_path` (none: every attribute empty, as data prepared without demographics)."""
  columns: dict[str, dict] = {'age': {}, 'gender': {}, 'occupation': {}, 'platform': {}}
  if os.path.exists(db_path):
    con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
    try:
      rows = con.execute('SELECT user_id, age, gender, occupation, platform FROM users').fetchall()
    except sqlite3.OperationalError:  # Prepared before the users table existed.
      rows = []
    finally:
      con.close()
    for user, age, gender, occupation, platform in rows:
      columns['age'][user] = int(age or 0)
      columns['gender'][user] = gender or ''
      columns['occupation'][user] = occupation or ''
      columns['platform'][user] = platform or ''
  return UserAttributes(**columns)


def parse(spec: str, available: Sequence[str]) -> tuple[str, ...]:
  """`--group_metrics`: 'all' (every attribute the data has), 'none', or a comma-separated list of attributes.

  Raises:
    ValueError: Naming an attribute that is unknown or that the data does not have, and the ones it has.
  """
  spec = spec.strip()
  if spec == 'all':
    return tuple(available)
  if spec in ('none', ''):
    return ()
  wanted = [a.strip() for a in spec.split(',') if a.strip()]
  missing = [a for a in wanted if a not in available]
  if missing:
    unknown = [a for a in missing if a not in ATTRIBUTES]
    why = f'unknown {unknown} (known: {list(ATTRIBUTES)})' if unknown else f'{missing} not in this data'
    raise ValueError(f'--group_metrics: {why}; this data has {list(available)} (or use all / none)')
  return tuple(a for a in ATTRIBUTES if a in wanted)


def _bucket_names(edges: Sequence[int], low: int = 0) -> list[str]:
  """Integer buckets [low, e1), [e1, e2), ..., [ek, inf) as 'low-(e1-1)', ..., 'ek+'."""
  bounds = [low, *edges]
  return [f'{a}-{b - 1}' for a, b in zip(bounds, bounds[1:])] + [f'{bounds[-1]}+']


POPULARITY_NAMES = _bucket_names(POPULARITY_EDGES)  # '0-9', '10-29', '30-99', '100+'.
AGE_NAMES = _bucket_names(AGE_EDGES, low=1)  # '1-17', '18-24', ..., '56+'.


def activity_edges(counts: np.ndarray) -> list[int]:
  """Upper bounds (inclusive) of the first three quartiles of `counts`, duplicates dropped (ties)."""
  if len(counts) == 0:
    return []
  return sorted({int(e) for e in np.quantile(np.asarray(counts), [0.25, 0.5, 0.75], method='lower')})


class Grouping:
  """The group columns of one evaluation, and each user's rows of that matrix.

  Args:
    attributes: The attributes to report (`parse`), in `ATTRIBUTES` order.
    users: The data's `UserAttributes`.
    item_raters: [items + 1] each item index's number of raters among the
      training users (index 0, the unknown item: 0).
    activity: The evaluated users' numbers of training ratings (the
      quartiles' population).
  """

  def __init__(self, attributes: Sequence[str], users: UserAttributes, item_raters: np.ndarray,
               activity: np.ndarray):
    self.attributes = tuple(attributes)
    self._users, self._raters = users, np.asarray(item_raters)
    self._activity_edges = activity_edges(activity)
    low = int(np.min(activity)) if len(activity) else 0
    edges = self._activity_edges
    self._activity_names = ([f'{low}-{edges[0]}'] + [f'{a + 1}-{b}' for a, b in zip(edges, edges[1:])] +
                            [f'{edges[-1] + 1}+'] if edges else ['all'])
    columns: list[tuple[str, str]] = []  # (attribute, value name)
    for attribute in self.attributes:
      columns += [(attribute, v) for v in self._values(attribute)]
    self.names = tuple(f'{PREFIX}{a}/{v}' for a, v in columns)
    self._index = {column: i for i, column in enumerate(columns)}

  def _values(self, attribute: str) -> list[str]:
    if attribute == ACTIVITY:
      return list(self._activity_names)
    if attribute == POPULARITY:
      return list(POPULARITY_NAMES)
    if attribute == AGE:
      present = {self._age_bucket(a) for a in self._users.age.values() if a > 0}
      return [name for name in AGE_NAMES if name in present]
    column = getattr(self._users, attribute)
    return sorted({v for v in column.values() if v and not (attribute == OCCUPATION and
                                                            v.startswith(_PSEUDO_OCCUPATION))})

  @staticmethod
  def _age_bucket(age: int) -> str:
    return AGE_NAMES[int(np.searchsorted(AGE_EDGES, age, side='right'))]

  def _activity_name(self, count: int) -> str:
    return self._activity_names[int(np.searchsorted(self._activity_edges, count, side='left'))]

  def user_rows(self, user: str, training_count: int, query_items: np.ndarray) -> np.ndarray:
    """[queries, groups] float32: 1 where query q of `user` (items `query_items`) belongs to group g."""
    rows = np.zeros((len(query_items), len(self.names)), np.float32)
    for attribute in self.attributes:
      if attribute == POPULARITY:
        raters = self._raters[np.asarray(query_items, np.int64)]
        buckets = np.searchsorted(POPULARITY_EDGES, raters, side='right')
        for q, b in enumerate(buckets):
          rows[q, self._index[attribute, POPULARITY_NAMES[b]]] = 1.0
        continue
      if attribute == ACTIVITY:
        value = self._activity_name(training_count)
      elif attribute == AGE:
        age = self._users.age.get(user, 0)
        value = self._age_bucket(age) if age > 0 else ''
      else:
        value = getattr(self._users, attribute).get(user, '')
      if (attribute, value) in self._index:
        rows[:, self._index[attribute, value]] = 1.0
    return rows


def item_raters(histories: Sequence[np.ndarray], num_items: int) -> np.ndarray:
  """[num_items + 1] the number of users whose history holds each item index (each user counted once)."""
  raters = np.zeros(num_items + 1, np.int64)
  for items in histories:
    raters[np.unique(np.asarray(items, np.int64))] += 1
  raters[0] = 0
  return raters


def is_group_key(key: str) -> bool:
  """Whether a metrics key is a group's (f'[prefix/]{PREFIX}{attribute}/...')."""
  return '/' + PREFIX in '/' + key


def small(users: float) -> bool:
  return users < MIN_USERS


def table(metrics: dict, prefix: str = '') -> list[tuple[str, dict[str, float]]]:
  """(group name, {metric: value}) for each group in finalized `metrics` whose keys start with `prefix`."""
  out: dict[str, dict[str, float]] = {}
  for key, value in metrics.items():
    if key.startswith(prefix + PREFIX):
      group, _, metric = key[len(prefix):].rpartition('/')
      out.setdefault(group, {})[metric] = value
  return sorted(out.items(), key=lambda item: _order(item[0]))


def _order(name: str) -> tuple:
  """Attributes in `ATTRIBUTES` order, numeric buckets by their lower bound, other values by name."""
  attribute, _, value = name[len(PREFIX):].partition('/')
  leading = re.match(r'\d+', value)
  return (ATTRIBUTES.index(attribute) if attribute in ATTRIBUTES else len(ATTRIBUTES), attribute,
          int(leading.group()) if leading else -1, value)

"""The on-disk contract of tff-rec's federated rating data.

Every prepared dataset is a SQLite file in TFF's `SqlClientData` format
(tables `examples` and `client_metadata`, as written by
`tff.simulation.datasets.save_to_sql_client_data`), plus three tables of ours
that TFF ignores: `tff_rec_metadata`, `items` and `users`.

Each example is a `tf.train.Example`; every split has a fixed element spec
(`element_spec`), so it loads with
`tff.simulation.datasets.load_and_parse_sql_client_data(path, element_spec(split), split)`.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
  import tensorflow as tf

CLIENTS_DB: Final = 'clients.sqlite'  # Cross-device: one client per user.
PLATFORMS_DB: Final = 'platforms.sqlite'  # Cross-silo: one client per platform.
STATS_JSON: Final = 'stats.json'

# MovieLens genre vocabulary, in the order of the GroupLens u.item flags.
GENRES: Final = (
    'unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy',
    'Crime', 'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror',
    'Musical', 'Mystery', 'Romance', 'Sci-Fi', 'Thriller', 'War', 'Western',
)
NUM_GENRES: Final = len(GENRES)
NUM_NEGATIVES: Final = 99  # NCF / PFedRec leave-one-out protocol.

# Split families. `ranking`: temporal leave-one-out; `rating`: random 80/10/10.
# Held-out users never appear in a `*_train` split: their first part is
# `*_support` (the data a model may reconstruct a user from), not training data.
RANKING: Final = 'ranking'
RATING: Final = 'rating'
HELDOUT_PREFIX: Final = 'heldout_'
TRAIN, VAL, TEST, SUPPORT = 'train', 'val', 'test', 'support'


def split_name(family: str, part: str, *, heldout: bool = False) -> str:
  """Returns the stored split name, e.g. `ranking_test` or `heldout_rating_support`."""
  if family not in (RANKING, RATING):
    raise ValueError(f'unknown split family {family!r}')
  if heldout:
    part = SUPPORT if part == TRAIN else part
    return f'{HELDOUT_PREFIX}{family}_{part}'
  return f'{family}_{part}'


ALL_SPLITS: Final = tuple(
    split_name(family, part, heldout=heldout)
    for heldout in (False, True)
    for family in (RANKING, RATING)
    for part in (TRAIN, VAL, TEST)
)


def has_negatives(split: str) -> bool:
  """Whether examples of `split` carry `negative_item_ids` (ranking val/test)."""
  return f'{RANKING}_' in split and split.endswith((f'_{VAL}', f'_{TEST}'))


def element_spec(split: str | None = None) -> collections.OrderedDict[str, tf.TensorSpec]:
  """The element spec of one example of `split` (or the part all splits share).

  Args:
    split: A name from `ALL_SPLITS`, or None for the features every split has.

  Returns:
    An ordered mapping from feature name to `tf.TensorSpec`.

  Raises:
    ValueError: If `split` is not a known split name.
  """
  if split is not None and split not in ALL_SPLITS:
    raise ValueError(f'unknown split {split!r}; known splits: {", ".join(ALL_SPLITS)}')
  # Imported here: preparing data needs the schema's names but not TensorFlow, whose import takes seconds.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  spec = collections.OrderedDict(
      user_id=tf.TensorSpec([], tf.string),
      item_id=tf.TensorSpec([], tf.string),
      rating=tf.TensorSpec([], tf.float32),
      timestamp=tf.TensorSpec([], tf.int64),
      item_genres=tf.TensorSpec([NUM_GENRES], tf.int64),  # Multi-hot over GENRES.
      item_year=tf.TensorSpec([], tf.int64),  # Release year; 0 if unknown.
      user_age=tf.TensorSpec([], tf.int64),
      user_gender=tf.TensorSpec([], tf.string),
      user_occupation=tf.TensorSpec([], tf.string),
  )
  if split is not None and has_negatives(split):
    spec['negative_item_ids'] = tf.TensorSpec([NUM_NEGATIVES], tf.string)
  return spec

"""Encoding of one rating as a `tf.train.Example` following `schema.element_spec`."""

from __future__ import annotations

from typing import Optional

import numpy as np
from tensorflow.core.example import example_pb2

from tff_rec.data import schema
from tff_rec.data.records import Item, User


class ExampleEncoder:
  """Serializes ratings, with item features looked up from the catalogue.

  Uses the protobuf classes directly (not `tf.train.Example` on tensors):
  it runs ~10x faster, which matters when streaming millions of users.
  """

  def __init__(self, items: dict[int, Item]):
    self._genres = {}
    for item_id, item in items.items():
      multi_hot = [0] * schema.NUM_GENRES
      for g in item.genres:
        multi_hot[g] = 1
      self._genres[item_id] = multi_hot
    self._years = {item_id: item.year for item_id, item in items.items()}

  def encode(
      self,
      user: User,
      item_id: int,
      rating: float,
      timestamp: int,
      negatives: Optional[np.ndarray] = None,
  ) -> bytes:
    """Returns the serialized example for one rating.

    Args:
      user: The rater.
      item_id: The rated item; must be in the catalogue.
      rating: The rating.
      timestamp: Unix seconds.
      negatives: Item ids for `negative_item_ids` (ranking val/test only).
    """
    example = example_pb2.Example()
    f = example.features.feature
    f['user_id'].bytes_list.value.append(str(user.user_id).encode())
    f['item_id'].bytes_list.value.append(str(item_id).encode())
    f['rating'].float_list.value.append(float(rating))
    f['timestamp'].int64_list.value.append(int(timestamp))
    f['item_genres'].int64_list.value.extend(self._genres[item_id])
    f['item_year'].int64_list.value.append(self._years[item_id])
    f['user_age'].int64_list.value.append(user.age)
    f['user_gender'].bytes_list.value.append(user.gender.encode())
    f['user_occupation'].bytes_list.value.append(user.occupation.encode())
    if negatives is not None:
      f['negative_item_ids'].bytes_list.value.extend(str(i).encode() for i in negatives.tolist())
    return example.SerializeToString()

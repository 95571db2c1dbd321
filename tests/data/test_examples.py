"""The hand-written Example encoder against protobuf's own messages."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

from tff_rec.data import examples, schema
from tff_rec.data.records import Item, User


def _expected(user, item, rating, timestamp, negatives=None):
  """The message built field by field with protobuf's API."""
  example = example_pb2.Example()
  f = example.features.feature
  f['user_id'].bytes_list.value.append(user.key.encode())
  f['item_id'].bytes_list.value.append(item.key.encode())
  f['rating'].float_list.value.append(rating)
  f['timestamp'].int64_list.value.append(timestamp)
  f['item_genres'].int64_list.value.extend([int(g in item.genres) for g in range(schema.NUM_GENRES)])
  f['item_year'].int64_list.value.append(item.year)
  f['user_age'].int64_list.value.append(user.age)
  f['user_gender'].bytes_list.value.append(user.gender.encode())
  f['user_occupation'].bytes_list.value.append(user.occupation.encode())
  if negatives is not None:
    f['negative_item_ids'].bytes_list.value.extend(str(i).encode() for i in negatives)
  return example


ITEMS = {7: Item(7, 'Amélie (2001)', 2001, (0, 8, 18)), 300: Item(300, '', 0, ()),
         **{i: Item(i, f't{i}', 1990, (1,)) for i in range(1000, 1000 + schema.NUM_NEGATIVES)}}


@pytest.mark.parametrize('user, item, rating, timestamp', [
    (User(1, 25, 'F', 'programmer'), 7, 4.5, 978_300_760),
    (User(123_456_789, 0, '', 'group_03', name='user-ß'), 300, 1.0, 0),
    (User(2, 127, 'M', 'x' * 200), 7, -0.1, -5),  # Negative int64: ten-byte varint; long strings: 2-byte lengths.
    (User(3, 1, 'M', 'y'), 300, 3.0, 2**62),
])
def test_bytes_parse_to_the_message_protobuf_builds(user, item, rating, timestamp):
  encoder = examples.ExampleEncoder(ITEMS)
  parsed = example_pb2.Example.FromString(encoder.encode(user, item, rating, timestamp))
  assert parsed == _expected(user, ITEMS[item], np.float32(rating), timestamp)


def test_negatives_and_many_ratings_and_tensorflow_parses_them():
  encoder = examples.ExampleEncoder(ITEMS)
  user = User(9, 30, 'F', 'writer')
  negatives = np.arange(1000, 1000 + schema.NUM_NEGATIVES)
  blob = encoder.encode(user, 7, 5.0, 12, negatives)
  assert example_pb2.Example.FromString(blob) == _expected(user, ITEMS[7], 5.0, 12, negatives)
  blobs = encoder.encode_many(user, [7, 300], [2.0, 3.0], [1, 2])
  assert [example_pb2.Example.FromString(b) for b in blobs] == [_expected(user, ITEMS[7], 2.0, 1),
                                                                 _expected(user, ITEMS[300], 3.0, 2)]
  split = schema.split_name(schema.RANKING, schema.TEST)
  spec = schema.element_spec(split)
  features = {k: tf.io.FixedLenFeature(s.shape, s.dtype) for k, s in spec.items()}
  parsed = tf.io.parse_single_example(blob, features)
  assert parsed['item_id'].numpy() == b'7' and parsed['timestamp'].numpy() == 12
  assert parsed['item_genres'].numpy().tolist()[:2] == [1, 0] and parsed['negative_item_ids'].shape == (99,)


def test_a_vocabulary_wider_than_the_schema_is_refused():
  with pytest.raises(ValueError, match='at most 19 slots, got 20'):
    examples.ExampleEncoder(ITEMS, [f'g{i}' for i in range(20)])


@pytest.mark.parametrize('value', [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 978_300_760, 2**63 - 1])
def test_varints_are_protobufs(value):
  from google.protobuf.internal import encoder  # pylint: disable=g-import-not-at-top
  assert examples._varint(value) == encoder._VarintBytes(value)  # pylint: disable=protected-access


def test_a_negative_int64_is_a_ten_byte_varint():
  assert examples._varint(-1) == b'\xff' * 9 + b'\x01'  # pylint: disable=protected-access


def test_an_example_with_negatives_reuses_the_ratings_features():
  encoder = examples.ExampleEncoder(ITEMS)
  user = User(9, 30, 'F', 'writer')
  negatives = np.arange(1000, 1000 + schema.NUM_NEGATIVES)
  (features,) = encoder.features(user, [7], [5.0], [12])
  assert examples.example(features, encoder.negatives_entry(negatives)) == encoder.encode(user, 7, 5.0, 12, negatives)
  assert examples.example(features) == encoder.encode(user, 7, 5.0, 12)

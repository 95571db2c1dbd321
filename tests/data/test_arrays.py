"""Per-client arrays read from SQLite equal what TFF's own ClientData loader yields."""

import numpy as np

from tff_rec import preprocessing
from tff_rec.data import arrays, client_data, schema


def test_arrays_match_tff_loader_in_order(tiny_dataset):
  db = f'{tiny_dataset}/{schema.CLIENTS_DB}'
  lookup = preprocessing.id_lookup(preprocessing.item_vocabulary(db))
  for split in ('ranking_train', 'ranking_test', 'rating_val'):
    loaded = client_data.load(db, split)
    split_arrays = arrays.SplitArrays(db, split, lookup)
    assert sorted(loaded.client_ids) == split_arrays.client_ids
    ids = split_arrays.client_ids[:5]
    for client, got in zip(ids, split_arrays.get(ids)):
      examples = list(loaded.create_tf_dataset_for_client(client).as_numpy_iterator())
      np.testing.assert_array_equal(got.items, lookup([e['item_id'] for e in examples]).numpy())
      np.testing.assert_array_equal(got.ratings, [e['rating'] for e in examples])
      if schema.has_negatives(split):
        np.testing.assert_array_equal(got.negatives, lookup(np.stack([e['negative_item_ids'] for e in examples])))
      else:
        assert got.negatives is None


def test_unknown_client_gets_empty_arrays(tiny_dataset):
  db = f'{tiny_dataset}/{schema.CLIENTS_DB}'
  lookup = preprocessing.id_lookup(preprocessing.item_vocabulary(db))
  got, = arrays.SplitArrays(db, 'rating_train', lookup).get(['no-such-client'])
  assert len(got) == 0 and got.items.dtype == np.int64

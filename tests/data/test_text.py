"""Title vectors: the word-vector loader, SIF means, and their trip through preparation into the item features."""

import os
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tff_rec.data import pipeline, records, text
from tff_rec.data.pipeline import PrepareOptions
from tff_rec.data.records import DataError, Item, User, UserRatings
from tff_rec.models import two_tower

WORDS = ['the', 'toy', 'story', 'king', 'lion']


def _write_table(directory, vectors, words):
  np.save(os.path.join(directory, 'vectors.npy'), np.asarray(vectors, np.float32))
  pq.write_table(pa.table({'index': words}), os.path.join(directory, 'words.parquet'))
  return os.path.join(directory, 'vectors.npy'), os.path.join(directory, 'words.parquet')


@pytest.fixture
def vectors(tmp_path):
  table = [[1, 0, 0], [0, 3, 0], [0, 0, 4], [2, 0, 0], [0, 2, 0]]
  return text.load_word_vectors(*_write_table(tmp_path, table, WORDS), name='test')


def test_titles_become_words_without_the_year():
  assert text.tokens('Lion King, The (1994)') == ['lion', 'king', 'the']
  assert text.tokens('Seven (Se7en) (1995)') == ['seven', 'se7en']
  assert text.tokens('Cité des enfants perdus, La') == ['cité', 'des', 'enfants', 'perdus', 'la']
  assert text.tokens('') == [] and text.tokens(None) == []


def test_sif_weights_follow_the_zipf_estimate(vectors):
  harmonic = np.log(5) + 0.5772156649
  for row in range(5):
    p = 1.0 / ((row + 1) * harmonic)
    assert vectors.weight(row) == pytest.approx(1e-3 / (1e-3 + p))
  assert vectors.weight(0) < vectors.weight(4)  # The most frequent word counts least.


def test_a_title_is_the_unit_length_weighted_mean_and_unknown_titles_are_zero(vectors):
  out, known = vectors.embed(['Toy Story (1995)', 'Lion King, The', 'Zyzzyva', 'toy'])
  w_toy, w_story = vectors.weight(1), vectors.weight(2)
  mean = np.array([0.0, 3 * w_toy, 4 * w_story])
  np.testing.assert_allclose(out[0], mean / np.linalg.norm(mean), rtol=1e-6)
  w_lion, w_king, w_the = vectors.weight(4), vectors.weight(3), vectors.weight(0)
  mean = np.array([2 * w_king + w_the, 2 * w_lion, 0.0])
  np.testing.assert_allclose(out[1], mean / np.linalg.norm(mean), rtol=1e-6)
  np.testing.assert_array_equal(out[2], np.zeros(3))
  np.testing.assert_allclose(out[3], [0.0, 1.0, 0.0])
  assert known == 3 and out.dtype == np.float32


def test_a_mismatched_or_missing_table_is_named(tmp_path):
  vec, words = _write_table(tmp_path, np.zeros((3, 2)), WORDS)
  with pytest.raises(DataError, match=r'shape \(3, 2\) for 5 words'):
    text.load_word_vectors(vec, words, 'bad')
  with pytest.raises(DataError, match='nowhere.npy does not exist'):
    text.load_word_vectors(str(tmp_path / 'nowhere.npy'), words, 'bad')
  with pytest.raises(DataError, match='--item_text_encoder must be one of'):
    text.load('bert')
  assert text.load('none') is None


def test_the_packaged_glove_vectors_load():
  glove = text.load('glove')
  assert glove.name == text.GLOVE and glove.vectors.shape == (400_000, 50)
  assert glove.index['the'] == 0  # In frequency order, as the SIF weights assume.
  out, known = glove.embed(['Toy Story', 'Star Wars', 'Babe'])
  assert known == 3
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def _prepare(out, vectors):
  """Four users rating six of 110 items (leave-one-out draws 99 negatives) whose titles the test's table partly
  knows."""
  titles = ['Toy Story (1995)', 'Lion King, The (1994)', 'Zyzzyva (1990)', 'Story', 'King Lion', 'Toy']
  titles += [f'Filler {i}' for i in range(104)]
  items = {i + 1: Item(i + 1, title, records.title_year(title), (i % 3,)) for i, title in enumerate(titles)}
  rng = np.random.default_rng(0)
  users = [UserRatings(User(u, 30, 'F', 'other'), np.arange(1, 7, dtype=np.int64),
                       rng.integers(1, 6, 6).astype(np.float32), np.arange(6, dtype=np.int64) + 10 * u)
           for u in range(1, 5)]
  result = pipeline.prepare(users, np.arange(1, 5), items, out, PrepareOptions(seed=0, heldout_fraction=0.0),
                            {'dataset': 'test'}, progress=False, text=vectors)
  vocabulary = sorted(str(i) for i in items)
  return result, [titles[int(k) - 1] for k in vocabulary], vocabulary


def test_preparation_stores_each_titles_vector_and_the_features_read_them(tmp_path, vectors):
  out = str(tmp_path / 'data')
  result, titles, vocabulary = _prepare(out, vectors)
  expected, known = vectors.embed(titles)
  assert result['item_text'] == {'encoder': 'test', 'dim': 3, 'titles_with_known_words': known} and known == 5 and len(titles) == 110
  features = two_tower.item_features(os.path.join(out, 'clients.sqlite'), vocabulary, text=True)
  np.testing.assert_array_equal(features.text[0], np.zeros(3))  # The unknown item.
  np.testing.assert_array_equal(features.text[1:], expected)
  np.testing.assert_array_equal(features.dense, np.concatenate([features.genres, features.text], axis=1))
  assert two_tower.item_features(os.path.join(out, 'clients.sqlite'), vocabulary).text is None


def test_data_prepared_without_title_vectors_is_refused_by_name(tmp_path):
  out = str(tmp_path / 'data')
  _, _, vocabulary = _prepare(out, None)
  with pytest.raises(ValueError, match=r'no title vector for 110 of 110 items.*--item_text_encoder=glove'):
    two_tower.item_features(os.path.join(out, 'clients.sqlite'), vocabulary, text=True)

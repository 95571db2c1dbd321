"""training_loop.RoundData: the next round's data read in the background, exactly what a direct read gives."""

import threading

import pytest

from tff_rec import training_loop


def test_round_data_prefetches_the_next_round_and_returns_what_a_direct_read_does():
  requested = []
  second_requested = threading.Event()

  def data_fn(cohort, round_num):
    requested.append(round_num)
    if round_num == 2:
      second_requested.set()
    return [f'{c}@{round_num}' for c in cohort]

  data = training_loop.RoundData(lambda r: [f'c{r}', f'd{r}'], data_fn, last_round=3)
  try:
    assert data.get(1) == (['c1', 'd1'], ['c1@1', 'd1@1'])
    assert second_requested.wait(timeout=10)  # Round 2 is read before anyone asks for it.
    assert data.get(2) == (['c2', 'd2'], ['c2@2', 'd2@2'])
    assert data.get(3) == (['c3', 'd3'], ['c3@3', 'd3@3'])
    data.wait()
    assert requested == [1, 2, 3]  # Nothing past the last round, nothing twice.
  finally:
    data.close()


def test_round_data_skips_empty_cohorts_and_raises_a_failed_read_when_that_round_comes():
  def data_fn(cohort, round_num):
    if round_num == 3:
      raise OSError('disk gone')
    return list(cohort)

  data = training_loop.RoundData(lambda r: [] if r == 2 else ['x'], data_fn, last_round=3)
  try:
    assert data.get(1) == (['x'], ['x'])
    assert data.get(2) == ([], [])
    with pytest.raises(OSError, match='disk gone'):
      data.get(3)
  finally:
    data.close()

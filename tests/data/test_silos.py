"""Cross-silo platform assignment by occupation."""

import pytest

from tff_rec.data import silos


def test_greedy_assignment_by_descending_count():
  counts = {'student': 196, 'other': 105, 'educator': 95, 'administrator': 79, 'engineer': 67}
  # Largest first, each to the smaller platform (sizes after each step):
  # student 196 -> p0 (196, 0); other 105 -> p1 (196, 105); educator 95 -> p1 (196, 200);
  # administrator 79 -> p0 (275, 200); engineer 67 -> p1 (275, 267).
  assert silos.assign_platforms(counts, 2) == {
      'student': 'platform_0', 'other': 'platform_1', 'educator': 'platform_1',
      'administrator': 'platform_0', 'engineer': 'platform_1'}


def test_ties_break_by_name_and_lowest_platform():
  assert silos.assign_platforms({'b': 1, 'a': 1, 'c': 1}, 2) == {
      'a': 'platform_0', 'b': 'platform_1', 'c': 'platform_0'}


@pytest.mark.parametrize('num_platforms, message', [(0, 'must be >= 1'), (4, 'exceeds the 3 occupations')])
def test_impossible_counts(num_platforms, message):
  with pytest.raises(ValueError, match=message):
    silos.assign_platforms({'a': 1, 'b': 2, 'c': 3}, num_platforms)

"""benchmarks.defence_cost on tiny data: every defence timed on the same clean cohorts, ratios to none's."""

import re

import pytest
from absl.testing import flagsaver

from benchmarks import defence_cost

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


def test_each_defence_is_timed_beside_none(tiny_dataset, capsys):
  with flagsaver.flagsaver(data_dir=tiny_dataset, clients_per_round=5, batch_size=8, embedding_dim=4,
                           attack='model_poisoning', malicious_fraction=0.1, num_target_items=1,
                           row_norm_bound=0.1, defences=['trimmed_mean'], bench_rounds=4):
    assert defence_cost.main(['defence_cost']) is None
  out = capsys.readouterr().out
  assert re.search(r'^36 users, 5 a round, 2 timed rounds each, taking turns$', out, re.M)  # No Sybils joined.
  assert re.search(r'^none +median round [0-9.]+ s: ratio 1\.000$', out, re.M)
  assert re.search(r'^trimmed_mean +median round [0-9.]+ s: ratio [0-9.]+$', out, re.M), out


def test_dp_is_not_a_defence_it_times(tiny_dataset, capsys):
  with flagsaver.flagsaver(data_dir=tiny_dataset, defences=['dp']):
    assert defence_cost.main(['defence_cost']) == 2
  assert 'defence_cost: error: --defences must be some of none, norm_bound, row_bound, trimmed_mean, median, ' \
         "got ['dp']" in capsys.readouterr().err

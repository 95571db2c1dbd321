"""benchmarks.turns: every engine takes every position once in any len(items) consecutive rounds."""

from benchmarks import turns


def test_each_item_takes_each_position_once_per_cycle():
  items = ['a', 'b', 'c']
  orders = [turns.in_turn(items, r) for r in range(7, 10)]
  assert orders == [['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
  for position in range(3):
    assert sorted(order[position] for order in orders) == items


def test_empty_and_single():
  assert turns.in_turn([], 3) == []
  assert turns.in_turn(['x'], 5) == ['x']

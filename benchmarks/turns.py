"""Engines taking turns round by round, each going first in turn.

Measured on this machine (docs/log.md, 2026-12-01): of two identical engines
taking turns on the same cohorts, the one that always runs first (right after
the round's data is read, with TFF's worker idle) took 9-12% longer a round.
A fixed order therefore charges that to one engine; rotating it shares it out.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar('T')


def in_turn(items: Sequence[T], round_num: int) -> list[T]:
  """`items` rotated by `round_num`: over any len(items) consecutive rounds each goes first once, and each
  position is taken by each item once."""
  shift = round_num % len(items) if items else 0
  return list(items[shift:]) + list(items[:shift])

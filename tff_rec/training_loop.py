"""The one federated training loop every experiment uses.

Round bookkeeping is TFF's program library: checkpoints with
`tff.program.FileProgramStateManager` (resume = load the latest), metrics with
`tff.program.CSVFileReleaseManager` (which drops rows past a resumed round)
and `tff.program.TensorBoardReleaseManager`. Progress is a tqdm bar.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tqdm

from tff_rec import runtime  # noqa: F401  Managed TFF context (no leaked worker).

_LOG = logging.getLogger(__name__)
CHECKPOINT_DIR, METRICS_CSV, TENSORBOARD_DIR = 'checkpoints', 'metrics.csv', 'tensorboard'


class IncompatibleCheckpointError(ValueError):
  """The output directory holds checkpoints of a different state structure."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  rounds: int
  eval_every: int = 10
  checkpoint_every: int = 10
  progress: bool = True
  eval_users: int = 0  # Evaluate a seeded sample of this many users of each split (0: every user).

  def validate(self) -> None:
    if self.rounds < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
      raise ValueError(f'rounds, eval_every and checkpoint_every must be >= 1, got {self}')
    if self.eval_users < 0:
      raise ValueError(f'--eval_users must be >= 0 (0: every user), got {self.eval_users}')


class RoundData:
  """Each round's cohort and its clients' data; the next round's is read in a background thread meanwhile.

  Written by hand (a one-slot prefetch): reading a cohort from SQLite and
  building its examples (sqlite3 and TF release the GIL) overlaps the current
  round's TF work, so a population too large for the page cache costs what the
  cohort's compute costs. Cohorts and data are seeded per round, so what is
  prefetched is exactly what would be read then.
  """

  def __init__(self, cohort_fn: Callable[[int], list[str]], data_fn: Callable[[list[str], int], list[Any]],
               last_round: int):
    self._cohort_fn, self._data_fn, self._last_round = cohort_fn, data_fn, last_round
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='round-data')
    self._pending: dict[int, concurrent.futures.Future] = {}

  def _load(self, round_num: int) -> tuple[list[str], list[Any]]:
    cohort = self._cohort_fn(round_num)
    return cohort, (self._data_fn(cohort, round_num) if cohort else [])

  def get(self, round_num: int) -> tuple[list[str], list[Any]]:
    """Round `round_num`'s (cohort, data); starts reading the next round's."""
    future = self._pending.pop(round_num, None)
    result = future.result() if future else self._load(round_num)
    if round_num < self._last_round:
      self._pending[round_num + 1] = self._pool.submit(self._load, round_num + 1)
    return result

  def wait(self) -> None:
    """Blocks until the prefetch in flight (if any) is done."""
    concurrent.futures.wait(list(self._pending.values()))

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = '') -> dict[str, float]:
  """Nested TFF round metrics -> {'client_work/train/loss': 0.69, ...} (scalars only)."""
  flat = {}
  for key, value in metrics.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten_metrics(value, name + '/'))
    else:
      array = np.asarray(value)
      if array.size == 1:
        flat[name] = float(array)
  return flat


def read_history(output_dir: str) -> list[dict[str, float]]:
  """Every released round of the run in `output_dir` (across resumes), from metrics.csv."""
  with open(os.path.join(output_dir, METRICS_CSV), newline='') as f:
    return [{('round' if k == 'key' else k): float(v) for k, v in row.items() if v not in ('', None)}
            for row in csv.DictReader(f)]


def run(
    process: Any,
    *,
    cohort_fn: Callable[[int], list[str]],
    data_fn: Callable[[list[str], int], list[Any]],
    evaluate_fn: Callable[[Any], dict[str, float]],
    config: LoopConfig,
    output_dir: str,
    round_metrics_fn: Callable[[int], dict[str, float]] | None = None,
    budget_fn: Callable[[int], str | None] | None = None,
) -> Any:
  """Runs rounds 1..config.rounds, resuming after the latest checkpoint in `output_dir`.

  Args:
    process: The training engine (`process.ShardEngine`, `fed_recon.TffEngine`):
      `initialize()` and `next(state, data)` -> output with `.state`, `.metrics`.
    cohort_fn: round -> client ids (seeded per round).
    data_fn: (client ids, round) -> their datasets.
    evaluate_fn: state -> validation metrics, run every `eval_every` rounds
      and after the last one.
    config: Rounds and cadences.
    output_dir: Checkpoints, metrics CSV and TensorBoard events go here.
    round_metrics_fn: round -> metrics recorded with that round (e.g. epsilon so far).
    budget_fn: round -> None to run it, or why it must not run (a privacy budget
      it would exceed): the loop stops before it, saying so, and checkpoints.

  Returns:
    The server state after the last round run, and that round's number.
  """
  config.validate()
  os.makedirs(output_dir, exist_ok=True)
  state_manager = tff.program.FileProgramStateManager(os.path.join(output_dir, CHECKPOINT_DIR), keep_total=2,
                                                      keep_first=False)
  csv = tff.program.CSVFileReleaseManager(os.path.join(output_dir, METRICS_CSV))
  tensorboard = tff.program.TensorBoardReleaseManager(os.path.join(output_dir, TENSORBOARD_DIR))
  state = process.initialize()
  incompatible = IncompatibleCheckpointError(
      f'the checkpoints in {os.path.join(output_dir, CHECKPOINT_DIR)} do not fit this run\'s state (written by '
      'another configuration or version of tff-rec); use another --experiment_name, or delete that directory to '
      'start over')
  try:
    loaded, version = asyncio.run(state_manager.load_latest(state))
  except (ValueError, TypeError) as e:
    raise incompatible from e
  if loaded is not None and [np.shape(x) for x in tf.nest.flatten(loaded)] != [
      np.shape(x) for x in tf.nest.flatten(state)]:
    raise incompatible  # Same structure, other shapes (e.g. another --embedding_dim).
  start = 0
  if loaded is not None:
    state, start = loaded, version
    _LOG.info('Resuming from the checkpoint after round %d', start)
  bar = tqdm.tqdm(range(start + 1, config.rounds + 1), initial=start, total=config.rounds, unit='round',
                  disable=not config.progress, dynamic_ncols=True)
  completed = start
  round_data = RoundData(cohort_fn, data_fn, config.rounds)
  try:
    for round_num in bar:
      refusal = budget_fn(round_num) if budget_fn else None
      if refusal:
        bar.close()
        _LOG.warning('Stopping before round %d: %s', round_num, refusal)
        print(f'Stopped before round {round_num}: {refusal}')
        if completed > start and completed % config.checkpoint_every:
          asyncio.run(state_manager.save(state, completed))
        break
      began = time.monotonic()
      cohort, data = round_data.get(round_num)
      if cohort:
        output = process.next(state, data)
        state = output.state
        metrics = flatten_metrics(output.metrics)
      else:  # Poisson sampling can draw nobody: the round is a no-op, counted.
        metrics = {}
      metrics.update(round_seconds=time.monotonic() - began, clients=float(len(cohort)))
      if round_metrics_fn:
        metrics.update(round_metrics_fn(round_num))
      if round_num % config.eval_every == 0 or round_num == config.rounds:
        metrics.update(evaluate_fn(state))
      asyncio.run(csv.release(metrics, key=round_num))
      asyncio.run(tensorboard.release(metrics, key=round_num))
      if round_num % config.checkpoint_every == 0 or round_num == config.rounds:
        asyncio.run(state_manager.save(state, round_num))
      completed = round_num
      bar.set_postfix({k.split('/')[-1]: f'{v:.4f}' for k, v in metrics.items()
                       if k.endswith(('train/loss', 'hr@10', 'rmse'))}, refresh=False)
  finally:
    round_data.close()
  return state, completed

"""Federated Reconstruction's client maths as a plain single-threaded NumPy loop: the cost without any framework.

One user after another: reconstruct the user from zeros (SGD on the
batch-mean loss, items frozen), train the item rows its batches touch (SGD,
user frozen), and add its update `initial - final` to the round's sum. The
same maths as `tff_rec.federated.shard_math.user_updates` for the implicit
objective (tested equal in tests/benchmarks/test_numpy_reference.py), written
by hand as the benchmark's reference of what the work costs: the engine's
round throughput is read against it (`benchmarks.federated_speed`).
"""

from __future__ import annotations

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def user_update(q: np.ndarray, b: np.ndarray, items: np.ndarray, labels: np.ndarray, *, batch_size: int, l2: float,
                client_lr: float, recon_lr: float, recon_epochs: int,
                local_epochs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One user's (touched rows, embedding deltas [K, d], bias deltas [K, 1]) for item table q [R, d], biases b [R, 1]."""
  batches = [(items[s:s + batch_size], labels[s:s + batch_size]) for s in range(0, len(items), batch_size)]
  p = np.zeros(q.shape[1], q.dtype)
  for _ in range(recon_epochs):
    for x, y in batches:
      qx = q[x]
      g = (_sigmoid(qx @ p + b[x, 0]) - y) / len(x)
      p = p - recon_lr * (g @ qx + 2.0 * l2 * p)
  rows, local = np.unique(items, return_inverse=True)
  q_local, b_local = q[rows].copy(), b[rows].copy()
  starts = [local[s:s + batch_size] for s in range(0, len(items), batch_size)]
  for _ in range(local_epochs):
    for (_, y), x in zip(batches, starts):
      qx = q_local[x]
      g = (_sigmoid(qx @ p + b_local[x, 0]) - y) / len(x)
      grad_q = g[:, None] * p[None] + (2.0 * l2 / len(x)) * qx  # d/dq of the batch mean of l2 (|p|^2 + |q_i|^2).
      np.subtract.at(q_local, x, client_lr * grad_q)
      np.subtract.at(b_local, x, client_lr * g[:, None])
  return rows, q[rows] - q_local, b[rows] - b_local


def round_sum(q: np.ndarray, b: np.ndarray, cohort: list[tuple[np.ndarray, np.ndarray]], **settings
              ) -> tuple[np.ndarray, np.ndarray, int]:
  """The sum of the cohort's users' updates (dense), and the training examples processed."""
  sum_q, sum_b = np.zeros_like(q), np.zeros_like(b)
  examples = 0
  for items, labels in cohort:
    if not len(items):
      continue
    rows, dq, db = user_update(q, b, items, labels, **settings)
    sum_q[rows] += dq
    sum_b[rows] += db
    examples += len(items) * settings['local_epochs']
  return sum_q, sum_b, examples

"""Learning-curve figure of a run, and writing any figure (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from tff_rec import atomic  # pylint: disable=g-import-not-at-top,wrong-import-position


def learning_curve(history: list[dict[str, float]], path: str, *, loss_key: str, metric_key: str) -> None:
  """Writes train loss and a validation metric against rounds to `path` (atomically)."""
  fig, loss_axis = plt.subplots(figsize=(7, 4))
  rounds = [h['round'] for h in history if loss_key in h]
  loss_axis.plot(rounds, [h[loss_key] for h in history if loss_key in h], color='tab:blue', label='train loss')
  loss_axis.set_xlabel('round')
  loss_axis.set_ylabel('train loss', color='tab:blue')
  metric_axis = loss_axis.twinx()
  points = [(h['round'], h[metric_key]) for h in history if metric_key in h]
  if points:
    metric_axis.plot(*zip(*points), 'o-', color='tab:orange', label=metric_key)
  metric_axis.set_ylabel(metric_key, color='tab:orange')
  save(fig, path, dpi=100)


def save(figure, path: str, dpi: float | None = None) -> None:
  """Lays out `figure`, writes it to `path` as PNG atomically (nothing half written), and closes it."""
  figure.tight_layout()
  with atomic.replacing(path, suffix='.png') as temporary:
    figure.savefig(temporary, format='png', dpi=dpi)
  plt.close(figure)

"""Logging set-up every binary shares (kept apart from common_flags, whose flags only training binaries take)."""

from __future__ import annotations

import logging

from absl import app, flags
from absl import logging as absl_logging


class _KnownNoise(logging.Filter):
  """Drops TF warnings that say nothing to a user of tff-rec."""

  # DP clipping runs tensorflow-privacy's per-record code under tf.vectorized_map; TF warns once per trace that
  # its L2Loss op runs as a loop (measured: 4 ms a round for 100 clients).
  MESSAGES = ('cause there is no registered converter for this op',)

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(m in record.getMessage() for m in self.MESSAGES)


def configure_logging() -> None:
  """Warnings only unless --verbosity is given: the progress bar and the results table are the output.

  (absl applies a changed default of --verbosity only when the flag is parsed
  from the command line, and TF's SavedModel writer, which checkpoints use,
  logs at INFO through the `tensorflow` logger.)
  """
  if not flags.FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger('tensorflow').setLevel(logging.WARNING)
    logging.getLogger('tensorflow').addFilter(_KnownNoise())


def start(argv: list[str]) -> None:
  """A binary's first step: flags only (a positional argument is a usage error), then `configure_logging`."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  configure_logging()

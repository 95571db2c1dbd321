"""Logging set-up every binary shares (kept apart from common_flags, whose flags only training binaries take)."""

from __future__ import annotations

import logging

from absl import flags
from absl import logging as absl_logging


def configure_logging() -> None:
  """Warnings only unless --verbosity is given: the progress bar and the results table are the output.

  (absl applies a changed default of --verbosity only when the flag is parsed
  from the command line, and TF's SavedModel writer, which checkpoints use,
  logs at INFO through the `tensorflow` logger.)
  """
  if not flags.FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger('tensorflow').setLevel(logging.WARNING)

"""TensorFlow's C++ start-up lines (CUDA factory registration, oneDNN, grappler) off unless asked for.

Must run before TensorFlow is imported: `experiments/__init__.py` and
`benchmarks/__init__.py` call it, so every binary and benchmark prints its own
progress and results. `--verbosity` on the command line (any value) leaves
TensorFlow's logging as it is, as does a `TF_CPP_MIN_LOG_LEVEL` already set.
Written by hand: TensorFlow reads the level from the environment once, at import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

LEVEL = 'TF_CPP_MIN_LOG_LEVEL'


def quiet_unless_verbose(argv: Sequence[str]) -> bool:
  """Sets TensorFlow's C++ log level to fatal-only unless `argv` asks for --verbosity; returns whether it is quiet."""
  if any(arg == '--verbosity' or arg.startswith('--verbosity=') or arg == '-v' for arg in argv[1:]):
    return False
  os.environ.setdefault(LEVEL, '3')
  return os.environ[LEVEL] == '3'

"""Write-then-rename, so a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def replacing(path: str, suffix: str = '') -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it over `path` if the block succeeds.

  Args:
    path: The final path.
    suffix: Appended to the temporary name (e.g. '.png', for writers that infer a format).
  """
  temporary = f'{path}.partial{suffix}'
  try:
    yield temporary
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_bytes(path: str, data: bytes) -> None:
  with replacing(path) as temporary, open(temporary, 'wb') as f:
    f.write(data)


def write_json(path: str, value: Any) -> None:
  write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + '\n').encode())

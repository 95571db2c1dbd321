"""Write-then-rename helper."""

import json
import os

import pytest

from tff_rec import atomic


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
  target = tmp_path / 'metrics.json'
  atomic.write_json(str(target), {'hr@10': 0.5})
  with pytest.raises(RuntimeError):
    with atomic.replacing(str(target)) as temporary:
      with open(temporary, 'w') as f:
        f.write('{"hr@10": 0.')  # Half written ...
      raise RuntimeError('killed')  # ... when the writer dies.
  assert json.loads(target.read_text()) == {'hr@10': 0.5}
  assert os.listdir(tmp_path) == ['metrics.json']


def test_successful_write_replaces(tmp_path):
  target = tmp_path / 'figure.png'
  target.write_bytes(b'old')
  with atomic.replacing(str(target), suffix='.png') as temporary:
    assert temporary.endswith('.png')
    with open(temporary, 'wb') as f:
      f.write(b'new')
  assert target.read_bytes() == b'new' and os.listdir(tmp_path) == ['figure.png']

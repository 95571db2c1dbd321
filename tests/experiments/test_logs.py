"""The start every binary shares: flags only, then quiet logging."""

import pytest
from absl import app

from experiments import logs


def test_a_positional_argument_is_a_usage_error_naming_it():
  with pytest.raises(app.UsageError, match=r"unexpected arguments: \['runs/demo'\]"):
    logs.start(['train_federated', 'runs/demo'])
  logs.start(['train_federated'])  # Flags only: starts.

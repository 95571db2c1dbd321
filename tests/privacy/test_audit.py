"""The loss-threshold membership-inference attack, by hand."""

import numpy as np
import pytest

from tff_rec.privacy import audit


def test_separable_losses_give_auc_one():
  result = audit.loss_threshold_attack(np.array([0.1, 0.2]), np.array([0.5, 0.9, 0.7]))
  assert result == {'mia/auc': 1.0, 'mia/advantage': 1.0}


def test_interleaved_losses_by_hand():
  # Members 0.1, 0.6; non-members 0.4, 0.8. Pairs (member lower): (0.1, 0.4), (0.1, 0.8), (0.6, 0.8) of 4 -> 0.75.
  result = audit.loss_threshold_attack(np.array([0.1, 0.6]), np.array([0.4, 0.8]))
  assert result['mia/auc'] == pytest.approx(0.75) and result['mia/advantage'] == pytest.approx(0.5)


def test_identical_distributions_give_chance():
  losses = np.random.default_rng(0).random(2000)
  assert audit.loss_threshold_attack(losses[:1000], losses[1000:])['mia/auc'] == pytest.approx(0.5, abs=0.05)


def test_needs_both_groups():
  with pytest.raises(ValueError, match='members and non-members'):
    audit.loss_threshold_attack(np.array([0.1]), np.array([]))

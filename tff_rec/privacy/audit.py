"""Membership-inference audit: can the trained model tell its training users from users it never saw?

The loss-threshold attack (Yeom et al., "Privacy Risk in Machine Learning",
CSF 2018), the threshold attack of tensorflow-privacy's membership-inference
tools: a user whose loss is lower is guessed a member. Reported as the attack's
ROC AUC (0.5 = no better than chance) and advantage max(TPR - FPR). Written with
scikit-learn because the pinned tensorflow-privacy 0.9.0 wheel does not ship
its `privacy_tests.membership_inference_attack` package (its old import path
re-exports from it and fails).

Members are training users and non-members held-out users; each is
reconstructed from its own data (Federated Reconstruction's setting) and
scored by its loss on that data.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics


def loss_threshold_attack(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> dict[str, float]:
  """AUC and advantage of guessing "member" for low loss."""
  if len(member_losses) == 0 or len(nonmember_losses) == 0:
    raise ValueError('the attack needs members and non-members')
  labels = np.r_[np.ones(len(member_losses)), np.zeros(len(nonmember_losses))]
  scores = -np.r_[member_losses, nonmember_losses]
  fpr, tpr, _ = metrics.roc_curve(labels, scores)
  return {'mia/auc': float(metrics.roc_auc_score(labels, scores)), 'mia/advantage': float(np.max(tpr - fpr))}

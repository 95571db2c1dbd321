"""Server learning-rate schedules over a run's rounds (`--server_lr_schedule`).

The rate of server step t (0-based) is the initial rate times `multiplier`:
linear or cosine decay (one cycle of Loshchilov & Hutter, "SGDR: Stochastic
Gradient Descent with Warm Restarts", ICLR 2017, without restarts) from 1 at
the first step to `final_fraction` after `rounds` steps, then flat. With
sampled cohorts, each server step follows one cohort's mean update; at a
constant rate the last model moves as far as any round's step, with the
sampling noise of its last few cohorts, and a decaying rate ends training on
an average over many cohorts instead.

`multiplier` is plain TF; `apply` wraps a `tff.learning.optimizers` optimizer
with TFF's `schedule_learning_rate`, whose state counts the steps taken, so a
resumed run continues the schedule from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf
import tensorflow_federated as tff

CONSTANT, LINEAR, COSINE = 'constant', 'linear', 'cosine'
SCHEDULES = (CONSTANT, LINEAR, COSINE)


@dataclasses.dataclass(frozen=True)
class LrSchedule:
  kind: str = CONSTANT
  rounds: int = 0  # The server steps the decay spans (the run's --rounds); 0 for a constant rate.
  final_fraction: float = 0.0  # The rate after `rounds` steps, as a fraction of the initial rate.

  def validate(self) -> None:
    if self.kind not in SCHEDULES:
      raise ValueError(f'--server_lr_schedule must be one of {SCHEDULES}, got {self.kind!r}')
    if not 0.0 <= self.final_fraction <= 1.0:
      raise ValueError(f'--server_lr_final_fraction must be in [0, 1], got {self.final_fraction}')
    if self.kind == CONSTANT and self.final_fraction != 0.0:
      raise ValueError('--server_lr_final_fraction is the end of a decaying --server_lr_schedule (linear or cosine), '
                       'not of a constant rate')
    if self.kind != CONSTANT and self.rounds < 1:
      raise ValueError(f'a {self.kind} server learning-rate schedule needs rounds >= 1, got {self.rounds}')


def multiplier(schedule: LrSchedule, step: tf.Tensor | int) -> tf.Tensor:
  """The factor on the initial rate for server step `step` (0-based): 1 at step 0, `final_fraction` from `rounds`."""
  if schedule.kind == CONSTANT:
    return tf.constant(1.0)
  progress = tf.minimum(tf.cast(step, tf.float32) / float(schedule.rounds), 1.0)
  final = schedule.final_fraction
  if schedule.kind == LINEAR:
    return 1.0 - (1.0 - final) * progress
  return final + (1.0 - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))


def apply(optimizer: tff.learning.optimizers.Optimizer, schedule: LrSchedule,
          learning_rate: float) -> tff.learning.optimizers.Optimizer:
  """`optimizer` (built with `learning_rate`) with its rate following `schedule`; unchanged if constant."""
  schedule.validate()
  if schedule.kind == CONSTANT:
    return optimizer
  return tff.learning.optimizers.schedule_learning_rate(
      optimizer, lambda step: learning_rate * multiplier(schedule, step))

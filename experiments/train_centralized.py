r"""Trains the same MF model centrally on the same splits: the baseline for federated runs.

  python -m experiments.train_centralized --flagfile=configs/centralized_mf_implicit.flags

All training users' examples are pooled and trained by minibatch gradient
descent (`tff_rec.centralized`); one round of the shared loop is one epoch.
Evaluation is the federated one (users reconstructed from their own data with
the trained item side), so numbers compare directly with train_federated's.
Writes the same outputs as train_federated, and resumes the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import app, flags

from experiments import common_flags, export_flags, logs
from tff_rec import centralized, experiment, tasks, training_loop
from tff_rec.federated import fed_recon
from tff_rec.models import reconstruction

# Training.
_EPOCHS = flags.DEFINE_integer('epochs', 20, 'Passes over all training users\' examples (one loop round each).')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'adam', list(fed_recon.SERVER_OPTIMIZERS), 'Optimizer.')
_LR = flags.DEFINE_float('learning_rate', 0.01, 'Learning rate.')
_CENTRAL_BATCH = flags.DEFINE_integer('central_batch_size', 256, 'Minibatch size of centralized training (examples; '
                                      'users\' windows for --model=sequence_two_tower).')
_USER_INIT = flags.DEFINE_float('user_init_stddev', 0.1, 'Stddev of the user-table initializer.')


@dataclasses.dataclass(frozen=True)
class CentralizedExperimentConfig:
  """Everything a run does, parsed once from flags."""

  data: tasks.DataConfig
  model: str
  objective: str
  embedding_dim: int
  l2: float
  init_stddev: float
  training: centralized.CentralizedConfig
  loop: training_loop.LoopConfig
  evaluation: reconstruction.EvalSettings
  output_dir: str
  seed: int
  export_dir: str | None = None
  top_k: int = 10
  group_metrics: str = 'all'
  sequence: dict = dataclasses.field(default_factory=dict)  # --model=sequence_two_tower's shape.

  def validate(self) -> None:
    self.data.validate()
    self.training.validate()
    self.loop.validate()
    if self.model == tasks.TWO_TOWER:
      raise ValueError('the centralized baseline trains --model=mf or sequence_two_tower')

    if self.data.view != 'cross_device':
      raise ValueError('--view must be cross_device: the centralized baseline pools users, not platforms')
    self.evaluation.validate()
    if self.top_k < 1:
      raise ValueError(f'--top_k must be >= 1, got {self.top_k}')


def config_from_flags() -> CentralizedExperimentConfig:
  model = common_flags.model_kwargs()
  return CentralizedExperimentConfig(
      data=common_flags.data_config(), **model,
      training=centralized.CentralizedConfig(_OPTIMIZER.value, _LR.value, _CENTRAL_BATCH.value, _USER_INIT.value,
                                             model['seed']),
      loop=common_flags.loop_config(_EPOCHS.value),
      evaluation=common_flags.eval_settings(common_flags.RECON_LR.value),
      output_dir=common_flags.output_dir(), export_dir=export_flags.EXPORT_DIR.value, top_k=export_flags.TOP_K.value,
      group_metrics=common_flags.GROUP_METRICS.value, sequence=common_flags.sequence_settings())


def build_task(config: CentralizedExperimentConfig) -> tasks.RecommendationTask:
  config.validate()
  task = tasks.RecommendationTask(config.data, objective=config.objective, embedding_dim=config.embedding_dim,
                                  l2=config.l2, init_stddev=config.init_stddev, seed=config.seed,
                                  model=config.model,
                                  sequence_settings=config.sequence if config.model == tasks.SEQUENCE else None)
  task.group_attributes(config.group_metrics)  # A group attribute the data does not have fails here.
  return task


def run(config: CentralizedExperimentConfig, task: tasks.RecommendationTask) -> dict[str, Any]:
  experiment.configure_determinism(True)
  if task.model_name == tasks.SEQUENCE:  # Minibatches of users' windows (--central_batch_size users).
    engine = centralized.SequenceCentralizedEngine(task, config.training)
  else:
    engine = centralized.CentralizedEngine(task, config.training, eval_learning_rate=config.evaluation.learning_rate,
                                           eval_epochs=config.evaluation.epochs)
  final = experiment.run(engine, task, cohort_fn=lambda _: engine.user_ids, seed=config.seed, loop=config.loop,
                        output_dir=config.output_dir, hparams=dataclasses.asdict(config), loss_key='train/loss',
                        eval_reconstruction=config.evaluation, export_to=(config.export_dir, config.top_k),
                        group_metrics=task.group_attributes(config.group_metrics))
  return final


def main(argv):
  logs.start(argv)
  config = config_from_flags()
  return experiment.main('train_centralized', lambda: build_task(config), lambda task: run(config, task),
                         config.output_dir)


if __name__ == '__main__':
  app.run(main)

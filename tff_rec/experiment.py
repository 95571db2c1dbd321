"""What every experiment binary does around its engine: train with the shared loop, evaluate, write outputs.

Writes to the output directory: hparams.json, metrics.csv, tensorboard/,
checkpoints/ (through `training_loop.run`), final_metrics.json,
learning_curve.png and model_state.npz (what export needs).
"""

from __future__ import annotations

import json
import logging
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # pylint: disable=g-direct-tensorflow-import

from tff_rec import atomic, attacks, preprocessing, runtime, tasks, training_loop
from tff_rec.data import schema
from tff_rec.evaluation import client_eval, groups
from tff_rec.models import reconstruction
from tff_rec.plotting import learning_curve
from tff_rec.privacy import audit, distributed, dp
from tff_rec.serving import export

# Keys final_metrics.json always has (null where the objective has no such metric).
REQUIRED_KEYS = ('rmse', 'mae', 'hr@10', 'ndcg@10', 'recall@20')
PRIVACY_LEDGER = 'privacy_ledger.json'
HPARAMS = 'hparams.json'
# What a resumed run may change: how long it trains, where and how it reports, how users are grouped into TFF
# clients (the same model); not what it trains.
RESUMABLE_SETTINGS = ('loop', 'output_dir', 'export_dir', 'top_k', 'workers', 'users_per_shard', 'shard_examples',
                      'group_metrics')


def configure_determinism(reproducible: bool) -> None:
  """Call before building an engine (TF fixes op seeds when it traces).

  Reproducible (same flags and seed, same metrics): without op determinism,
  multi-threaded reductions (scatter-adds, segment sums) may add in a different
  order from run to run. Every draw of the shard process is stateless under
  (seed, round), so its runs are; TFF's own DP and compression aggregators (the
  test references) draw from unseeded random ops, which determinism forbids.
  """
  if reproducible:
    tf.config.experimental.enable_op_determinism()
  else:
    tf_config.disable_op_determinism()  # TF's own switch back (tf.config has no public one in 2.14).


def run(engine: Any, task: tasks.RecommendationTask, *, cohort_fn: Callable[[int], list[str]], seed: int,
        loop: training_loop.LoopConfig, output_dir: str, hparams: dict[str, Any], loss_key: str,
        eval_reconstruction: reconstruction.EvalSettings, privacy: Any = None,
        export_to: tuple[str | None, int] = (None, 10),
        group_fn: Callable[[list[str]], list[list[int]]] | None = None,
        group_metrics: Sequence[str] = ()) -> dict[str, Any]:
  """Trains `engine` for `loop.rounds`, evaluates on test (and held-out users); returns the final metrics.

  Args:
    engine: `initialize`, `next(state, examples)`, `evaluate(state, clients)`.
    task: Data and model.
    cohort_fn: round -> the client ids whose examples that round trains on.
    group_fn: cohort ids -> the indices of each group of them that one client
      holds (a cross-silo platform's users); the round's examples are then
      `preprocessing.GroupedExamples`.
    seed: Seed of the examples (negatives, shuffling) and evaluation support.
    loop: Rounds and cadences.
    output_dir: Where everything is written.
    hparams: The run's configuration, written to hparams.json.
    loss_key: The flattened metrics key of the training loss, for the plot.
    eval_reconstruction: How evaluation reconstructs users (the engine's
      learning rate and epochs, and the support's recency emphasis);
      recorded in model_state.npz, from which
      `tff_rec.serving.export` builds the served model.
    privacy: A `dp.PrivacyLedger` for DP runs: epsilon per round, the budget
      stop, privacy_ledger.json and the final epsilon.
    export_to: (export directory or None, top K): also export the trained
      model as a SavedModel (`tff_rec.serving.export.export_run`).
    group_metrics: Attributes (`tff_rec.evaluation.groups`) whose groups every
      evaluation also reports metrics of: f'by_{attribute}/{value}/hr@10', ...
  """
  began = time.monotonic()
  check_resumable(output_dir, hparams)
  os.makedirs(output_dir, exist_ok=True)
  atomic.write_json(os.path.join(output_dir, HPARAMS), hparams)
  eval_clients = {}

  def eval_clients_for(part: str, heldout: bool):
    if (part, heldout) not in eval_clients:
      eval_clients[part, heldout] = task.eval_clients(part, heldout=heldout, seed=seed,
                                                      recent_items=eval_reconstruction.recent_items,
                                                      recent_repeats=eval_reconstruction.recent_repeats,
                                                      group_metrics=group_metrics, max_users=loop.eval_users)
    return eval_clients[part, heldout]

  def evaluate(state, part: str, *, heldout: bool = False, prefix: str = '') -> dict[str, float]:
    clients = eval_clients_for(part, heldout)
    return client_eval.finalize(engine.evaluate(state, clients), task.eval_kind, prefix, clients.group_names)

  def data_fn(ids: list[str], round_num: int) -> list:
    examples = task.train_examples(ids, round_num, seed)
    if group_fn:
      return preprocessing.GroupedExamples(examples, group_fn(ids))
    if isinstance(task.train_data, attacks.PoisonedPopulation):  # Which of the cohort are malicious.
      return attacks.CohortExamples(examples, task.train_data.is_malicious(ids))
    return examples

  state, rounds = training_loop.run(
      engine, cohort_fn=cohort_fn, data_fn=data_fn,
      evaluate_fn=lambda state: evaluate(state, schema.VAL, prefix='val/'), config=loop, output_dir=output_dir,
      round_metrics_fn=privacy.round_metrics if privacy else None, budget_fn=privacy.budget if privacy else None)
  final = evaluate(state, schema.TEST)
  final.update(evaluate(state, schema.TEST, heldout=True, prefix='heldout_users/'))
  for key in REQUIRED_KEYS:
    final.setdefault(key, None)
  if hasattr(engine, 'client_losses'):  # Membership inference: training users vs held-out users.
    members = engine.client_losses(state, eval_clients_for(schema.VAL, False))
    nonmembers = engine.client_losses(state, eval_clients_for(schema.VAL, True))
    final.update(audit.loss_threshold_attack(members, nonmembers))
  if privacy:
    final.update(privacy.write(os.path.join(output_dir, PRIVACY_LEDGER), rounds))
  e = eval_reconstruction
  shape = dataclasses.asdict(task.sequence_config) if task.model_name == tasks.SEQUENCE else None
  config = export.ServingConfig(task.objective, task.model_config.l2, task.data_config.batch_size,
                                task.data_config.num_negatives, e.learning_rate, e.epochs, seed, e.recent_items,
                                e.recent_repeats, task.model_name, e.als_alpha, e.als_regularization, shape)
  weights = engine.global_weights(state)
  if task.model_name in (tasks.TWO_TOWER, tasks.SEQUENCE):  # The candidate tower's constant feature tables too.
    weights = list(weights) + [task.item_features.dense, task.item_features.year_buckets]
  export.save_model_state(os.path.join(output_dir, export.MODEL_STATE), config, task.vocabulary, weights)
  final.update(rounds=rounds, wall_seconds=time.monotonic() - began)
  atomic.write_json(os.path.join(output_dir, 'final_metrics.json'), final)
  metric_key = 'val/hr@10' if task.eval_kind == client_eval.RANKING else 'val/rmse'
  learning_curve(training_loop.read_history(output_dir), os.path.join(output_dir, 'learning_curve.png'),
                 loss_key=loss_key, metric_key=metric_key)
  export_dir, top_k = export_to
  if export_dir:
    print(export.describe(export_dir, export.export_run(output_dir, export_dir, top_k)))
  return final


def read_hparams(output_dir: str) -> dict[str, Any]:
  """The configuration a run wrote (hparams.json), e.g. its calibrated noise multiplier."""
  with open(os.path.join(output_dir, HPARAMS)) as f:
    return json.load(f)


def changed_settings(previous: dict[str, Any], current: dict[str, Any], prefix: str = '') -> list[str]:
  """'name: old -> new' for each setting that differs (nested names joined by '.'), outside RESUMABLE_SETTINGS."""
  changes = []
  for key in sorted(set(previous) | set(current)):
    if not prefix and key in RESUMABLE_SETTINGS:
      continue
    old, new = previous.get(key), current.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      changes += changed_settings(old, new, f'{prefix}{key}.')
    elif old != new:
      changes.append(f'{prefix}{key}: {old!r} -> {new!r}')
  return changes


def check_resumable(output_dir: str, hparams: dict[str, Any]) -> None:
  """Refuses to resume checkpoints that a run with other settings wrote (checked before anything is written).

  Raises:
    training_loop.IncompatibleCheckpointError: Naming the settings that differ.
  """
  checkpoints = os.path.join(output_dir, training_loop.CHECKPOINT_DIR)
  if not (os.path.isdir(checkpoints) and os.listdir(checkpoints) and os.path.exists(os.path.join(output_dir, HPARAMS))):
    return
  changes = changed_settings(read_hparams(output_dir), json.loads(json.dumps(hparams)))
  if changes:
    raise training_loop.IncompatibleCheckpointError(
        f'the checkpoints in {checkpoints} are of a run with other settings ({"; ".join(changes)}); use another '
        '--experiment_name, or delete that directory to start over')


def format_results(final: dict) -> str:
  """The results table: the metrics, then the test metrics by group (if any), small groups flagged."""
  rows = [(k, v) for k, v in final.items()
          if v is not None and not k.endswith(('count', 'users')) and not groups.is_group_key(k)]
  width = max(len(k) for k, _ in rows)
  lines = [f'{k:<{width}}  {v:.4f}' if isinstance(v, float) else f'{k:<{width}}  {v}' for k, v in rows]
  by_group = groups.table(final)
  if by_group:
    names = [m for m in ('hr@10', 'ndcg@10', 'rmse', 'mae') if any(m in values for _, values in by_group)]
    width = max(len(name) for name, _ in by_group)
    lines += ['', f'{"test, by group":<{width}}  {"users":>6}  ' + '  '.join(f'{m:>7}' for m in names)]
    for name, values in by_group:
      cells = '  '.join(f'{values[m]:7.4f}' if m in values else f'{"-":>7}' for m in names)
      flag = f'  (fewer than {groups.MIN_USERS} users)' if groups.small(values['users']) else ''
      lines.append(f'{name:<{width}}  {int(values["users"]):>6}  {cells}{flag}')
  return '\n'.join(lines)


def main(program: str, build: Callable[[], Any], train: Callable[[Any], dict[str, Any]], output_dir: str) -> int:
  """A binary's main: `build()` (errors -> exit 2 with the message), then `train(built)` and the results table."""
  try:
    built = build()
  except (ValueError, FileNotFoundError) as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    return 2
  try:
    final = train(built)
  except (runtime.WorkerError, training_loop.IncompatibleCheckpointError) as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    return 1
  except dp.PrivacyConfigError as e:  # Raised while resolving the noise, before the first round.
    print(f'{program}: error: {e}', file=sys.stderr)
    return 2
  except distributed.DriftError as e:  # The round that drifted is neither checkpointed nor in metrics.csv.
    print(f'{program}: error: {e}; the run stopped, its checkpoints and metrics end at the round before',
          file=sys.stderr)
    return 1
  finally:
    runtime.stop_all_workers()
  logging.info('Wrote %s', output_dir)
  print(f'Results ({output_dir}/final_metrics.json):')
  print(format_results(final))
  return 0

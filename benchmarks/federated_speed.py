r"""Federated round speed, measured side by side in one run (issue 6: R1-R6; issue 15: the shard process).

  .venv/bin/python -m benchmarks.federated_speed [--rounds=12] [--headline_flagfile=...]

R1: steady-state federated throughput (training examples per second over
    rounds 3..N) / Keras `fit` throughput of the same MF model, batch size and
    examples, centralized. For the shard process (the default engine) and
    TFF's own `build_fed_recon`; and the shard process
    against a plain single-threaded NumPy loop of the same client maths
    (`benchmarks.numpy_reference`: the cost of the work without a framework).
R2: per-user fixed cost: the slope of round time against users per round at a
    fixed total of examples (least squares over several cohort sizes); and the
    per-shard fixed cost of TFF's runtime: the slope of round time against the
    number of shards for the same 100 equal users.
R3: DP round time / non-private round time (shard process, Gaussian fixed clip, the same cohorts,
    the engines taking turns round by round, each first in turn; medians); secure aggregation's, compression's
    and distributed DP's rounds / non-private likewise; and a second non-private engine / the first, the
    measurement's own error.
R4: memory: RSS (the process and TFF's worker) after round 500 / after round 10 of one long run, in a fresh
    child process.
Workers: round time across two local worker services (--workers) / the local runtime (shard process).
R6: wall time of the headline MovieLens-100K configuration to its final
    metrics (the binary run as a user runs it) on the shard process.

The shard process runs with the experiments' default sharding (shards of alike users, at most
`assembly.DEFAULT_USERS_PER_SHARD` users and `DEFAULT_SHARD_EXAMPLES` padded examples); beside the aggregators,
shards of 10 users (the default before 2026-12-01) take their turns too.

Ratios are what to read: this machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np
import portpicker
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from tff_rec import runtime, tasks
from benchmarks import numpy_reference, turns
from tff_rec.federated import aggregation, assembly, fed_recon, process, sampling
from tff_rec.models import mf
from tff_rec.privacy import dp

_DATA_DIR = flags.DEFINE_string('data_dir', 'data/movielens_100k', 'Prepared MovieLens-100K.')
_ROUNDS = flags.DEFINE_integer('rounds', 12, 'Rounds per engine for R1 (the first two are warm-up).')
_TFF_ROUNDS = flags.DEFINE_integer('tff_rounds', 5, 'Rounds of the TFF reference engine for R1.')
_HEADLINE = flags.DEFINE_string('headline_flagfile', 'configs/demo_fedrecon_mf.flags', 'R6 configuration.')
_SKIP_R6 = flags.DEFINE_bool('skip_r6', False, 'Skip the R6 end-to-end run.')
_WORKER_ROUNDS = flags.DEFINE_integer('worker_rounds', 6, 'TFF-engine rounds on 1 vs 2 local workers (0: skip).')
_R4_ROUNDS = flags.DEFINE_integer('r4_rounds', 500, 'Rounds of the R4 memory run (0: skip).')
_R4_CHILD = flags.DEFINE_bool('r4_child', False, 'Run only the R4 memory run in this process and print its three '
                                'RSS figures (what the benchmark runs in a fresh child).')

BATCH = 64
CLIENTS = 100
SHARDS = assembly.DEFAULT_SHARDING
CONFIG = fed_recon.ReconConfig(server_optimizer='adam', server_learning_rate=0.05, client_learning_rate=1.0,
                               reconstruction_learning_rate=2.0, reconstruction_epochs=1, local_epochs=1,
                               split_dataset=False)


def federated_throughput(engine, task, rounds: int) -> float:
  """Training examples per second over rounds 3..`rounds` (data preparation included)."""
  state = engine.initialize()
  examples, seconds = 0.0, 0.0
  for r in range(1, rounds + 1):
    began = time.perf_counter()
    ids = sampling.sample_clients(task.train_data.client_ids, r, 0, sampling.SamplingConfig(CLIENTS))
    output = engine.next(state, task.train_examples(ids, r, 0))
    state = output.state
    elapsed = time.perf_counter() - began
    if r >= 3:
      metrics = output.metrics['client_work']['train']
      examples += float(np.asarray(metrics['num_examples'])) if 'num_examples' in metrics else sum(
          len(x) for x, _ in task.train_examples(ids, r, 0))
      seconds += elapsed
  return examples / seconds


def keras_fit_throughput(task) -> float:
  """Keras `fit` of the same MF model (a user table instead of local rows) on the pooled examples, epoch 2."""
  config = task.model_config
  ids = task.train_data.client_ids
  examples = task.train_examples(ids, 1, 0)
  users = np.concatenate([np.full(len(x), u, np.int64) for u, (x, _) in enumerate(examples)])
  items = np.concatenate([x for x, _ in examples])
  labels = np.concatenate([y for _, y in examples])[:, None]
  user_in = tf.keras.Input((), dtype=tf.int64)
  item_in = tf.keras.Input((), dtype=tf.int64)
  p_u = tf.keras.layers.Embedding(len(ids), config.embedding_dim)(user_in)
  q_i = tf.keras.layers.Embedding(config.num_items + 1, config.embedding_dim)(item_in)
  b_i = tf.keras.layers.Embedding(config.num_items + 1, 1)(item_in)
  score = mf.predict(p_u, q_i, b_i)
  model = tf.keras.Model([user_in, item_in], tf.concat([score, mf.l2_penalty(p_u, q_i, config.l2)], -1))
  model.compile(tf.keras.optimizers.Adam(0.01), loss=mf.RegularizedLoss(config.objective))
  model.fit([users, items], labels, batch_size=BATCH, epochs=1, verbose=0)  # Warm-up (tracing).
  began = time.perf_counter()
  model.fit([users, items], labels, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
  return len(items) / (time.perf_counter() - began)


def per_client_cost(make_engine, task, sizes: list[int], total: int = 12_800) -> float:
  """Slope (seconds per client) of round time against cohort size at `total` examples per round."""
  rng = np.random.default_rng(0)
  engine = make_engine()
  state = engine.initialize()
  times = []
  for size in sizes:
    per_client = total // size
    cohort = [(rng.integers(1, task.model_config.num_items + 1, per_client),
               rng.integers(0, 2, per_client).astype(np.float32)) for _ in range(size)]
    engine.next(state, cohort)  # Warm-up for this shape.
    began = time.perf_counter()
    for _ in range(3):
      engine.next(state, cohort)
    times.append((time.perf_counter() - began) / 3)
  slope, _ = np.polyfit(sizes, times, 1)
  return float(slope)


def numpy_throughput(task, rounds: int) -> float:
  """Training examples per second of `numpy_reference.round_sum` over rounds 3..`rounds` (data preparation included),
  on the cohorts `federated_throughput` trains on; the item side stays at its initial values (the same cost)."""
  q, b = process.initial_weights(task.model_config)[:2]
  settings = dict(batch_size=BATCH, l2=task.model_config.l2, client_lr=CONFIG.client_learning_rate,
                  recon_lr=CONFIG.reconstruction_learning_rate, recon_epochs=CONFIG.reconstruction_epochs,
                  local_epochs=CONFIG.local_epochs)
  examples, seconds = 0.0, 0.0
  for r in range(1, rounds + 1):
    began = time.perf_counter()
    ids = sampling.sample_clients(task.train_data.client_ids, r, 0, sampling.SamplingConfig(CLIENTS))
    _, _, count = numpy_reference.round_sum(q, b, task.train_examples(ids, r, 0), **settings)
    if r >= 3:
      examples += count
      seconds += time.perf_counter() - began
  return examples / seconds


def per_shard_cost(task, shard_sizes: list[int], users: int = 100, per_user: int = 128) -> float:
  """Slope (seconds per shard) of round time against the number of shards, for the same `users` equal users."""
  rng = np.random.default_rng(0)
  cohort = [(rng.integers(1, task.model_config.num_items + 1, per_user), rng.integers(0, 2, per_user).astype(np.float32))
            for _ in range(users)]
  shards, times = [], []
  for size in shard_sizes:
    engine = process.ShardEngine(task, CONFIG, users_per_shard=size, eval_learning_rate=2.0, eval_epochs=1)
    state = engine.initialize()
    engine.next(state, cohort)  # Warm-up.
    began = time.perf_counter()
    for _ in range(3):
      engine.next(state, cohort)
    times.append((time.perf_counter() - began) / 3)
    shards.append(-(-users // size))
  slope, _ = np.polyfit(shards, times, 1)
  return float(slope)


def tree_rss_mb() -> float:
  """RSS of this process and its children (TFF's worker_binary runs the shard process's computations), MB."""
  me = psutil.Process()
  return sum(p.memory_info().rss for p in [me] + me.children(recursive=True)) / 2**20


def paired_round_seconds(engines: list, task, rounds: int) -> list[float]:
  """Median time of rounds 3..`rounds` of each engine, run round by round in turn on the same cohorts, each going
  first in turn (`turns.in_turn`)."""
  states = [engine.initialize() for engine in engines]
  seconds: list[list[float]] = [[] for _ in engines]
  for r in range(1, rounds + 1):
    ids = sampling.sample_clients(task.train_data.client_ids, r, 0, sampling.SamplingConfig(CLIENTS))
    examples = task.train_examples(ids, r, 0)
    for i in turns.in_turn(range(len(engines)), r):
      began = time.perf_counter()
      states[i] = engines[i].next(states[i], examples).state
      if r >= 3:
        seconds[i].append(time.perf_counter() - began)
  return [float(np.median(s)) for s in seconds]


def worker_round_seconds(task, rounds: int) -> tuple[float, float]:
  """Mean shard-process round time (rounds 3..N) on the local runtime and across two local worker services.

  The two take turns round by round on the same cohorts, each going first in turn (`--workers` switches TFF's
  default context to TFF's mergeable-computation context, which splits each round's clients between the workers).
  """
  ports = [portpicker.pick_unused_port() for _ in range(2)]
  for port in ports:
    runtime.start_worker(port)
  local = runtime.install_local_context()
  spread = runtime.create_workers_context(tuple(f'localhost:{p}' for p in ports))
  engines = [process.ShardEngine(task, CONFIG, **SHARDS, eval_learning_rate=2.0, eval_epochs=1)
             for _ in range(2)]
  states = [engine.initialize() for engine in engines]
  totals = [0.0, 0.0]
  for r in range(1, rounds + 1):
    ids = sampling.sample_clients(task.train_data.client_ids, r, 0, sampling.SamplingConfig(CLIENTS))
    examples = task.train_examples(ids, r, 0)
    for i, context in turns.in_turn(list(enumerate((local, spread))), r):
      tff.framework.set_default_context(context)
      began = time.perf_counter()
      states[i] = engines[i].next(states[i], examples).state
      if r >= 3:
        totals[i] += time.perf_counter() - began
  tff.framework.set_default_context(local)
  return totals[0] / (rounds - 2), totals[1] / (rounds - 2)


def memory_growth(engine, task, rounds: int) -> tuple[float, float, float]:
  """RSS (MB) after round 10, after round `rounds` // 2 and after round `rounds` of one long run."""
  state = engine.initialize()
  peaks = {}
  for r in range(1, rounds + 1):
    ids = sampling.sample_clients(task.train_data.client_ids, r, 0, sampling.SamplingConfig(CLIENTS))
    state = engine.next(state, task.train_examples(ids, r, 0)).state
    if r in (10, rounds // 2, rounds):
      # ru_maxrss would never go down; RSS now is what a leak would grow.
      peaks[r] = tree_rss_mb()
  return peaks[10], peaks[rounds // 2], peaks[rounds]


def memory_growth_alone(rounds: int) -> tuple[float, float, float]:
  """`memory_growth` of the shard process in a fresh child process: no other engine's memory in its baseline."""
  out = subprocess.run([sys.executable, '-m', 'benchmarks.federated_speed', '--r4_child', f'--r4_rounds={rounds}',
                        f'--data_dir={_DATA_DIR.value}'], check=True, capture_output=True, text=True,
                       env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}).stdout
  at_10, at_half, at_end = json.loads(out.strip().splitlines()[-1])
  return at_10, at_half, at_end


def headline_wall_seconds(flagfile: str, *flags_after: str) -> float:
  with tempfile.TemporaryDirectory() as root:  # Fresh: an existing run would resume, not train.
    began = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'experiments.train_federated', f'--flagfile={flagfile}',
                    f'--root_output_dir={root}', '--noprogress', *flags_after], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    return time.perf_counter() - began


def main(argv):
  del argv
  task = tasks.RecommendationTask(tasks.DataConfig(_DATA_DIR.value, batch_size=BATCH), embedding_dim=32,
                                  init_stddev=0.3, l2=0.003)
  task.train_data.preload()
  if _R4_CHILD.value:
    try:
      print(json.dumps(memory_growth(process.ShardEngine(task, CONFIG, **SHARDS, eval_learning_rate=2.0,
                                                         eval_epochs=1), task, _R4_ROUNDS.value)))
    finally:
      runtime.stop_all_workers()
    return

  def make(kind, **kwargs):
    if kind == 'shards':
      return process.ShardEngine(task, CONFIG, **SHARDS, eval_learning_rate=2.0, eval_epochs=1,
                                 **kwargs)
    return fed_recon.TffEngine(task, CONFIG, eval_learning_rate=2.0, eval_epochs=1)

  try:
    keras = keras_fit_throughput(task)
    numpy_loop = numpy_throughput(task, _ROUNDS.value)
    shards = federated_throughput(make('shards'), task, _ROUNDS.value)
    reference = federated_throughput(make('tff'), task, _TFF_ROUNDS.value)
    print(f'R1 Keras fit (centralized, batch {BATCH}): {keras:,.0f} examples/s')
    print(f'R1 shard process (shards of alike users, at most {SHARDS["users_per_shard"]} and '
          f'{SHARDS["shard_examples"]:,} padded examples): {shards:,.0f} examples/s  ratio {shards / keras:.2f}  '
          '(target >= 4)')
    print(f'R1 TFF build_fed_recon engine: {reference:,.0f} examples/s  ratio {reference / keras:.2f}')
    print(f'   shard process / TFF build_fed_recon: {shards / reference:.1f}x')
    print(f'NumPy loop of the same client maths (single-threaded): {numpy_loop:,.0f} examples/s; shard process / NumPy '
          f'{shards / numpy_loop:.2f} (target >= 1.0)')
    slope = per_client_cost(lambda: make('shards'), task, [25, 50, 100, 200])
    print(f'R2 per-user cost, shard process: {1000 * slope:.3f} ms/user (target <= 0.1)')
    print(f'R2 per-shard cost of TFF\'s runtime: {1000 * per_shard_cost(task, [100, 50, 20, 10, 5]):.2f} ms/shard')
    print(f'R2 per-client cost, TFF build_fed_recon: '
          f'{1000 * per_client_cost(lambda: make("tff"), task, [10, 20, 40]):.2f} ms/client')
    query = dp.dp_query(dp.DPConfig(dp.GAUSSIAN_FIXED, 1.0, 0.5), CLIENTS)
    private_engine = make('shards', aggregation=lambda dense: aggregation.DPFactory(query, dense, 0))
    secure_engine = make('shards', aggregation=lambda dense: aggregation.SecureMeanFactory(
        dense, SHARDS['users_per_shard']))
    compressed_engine = make('shards', aggregation=lambda dense: aggregation.CompressedMeanFactory(dense, 0))
    distributed_engine = make('shards', aggregation=lambda dense: aggregation.DistributedDPFactory(1.0, CLIENTS,
                                                                                                  dense, 0))
    by_count = process.ShardEngine(task, CONFIG, users_per_shard=10, eval_learning_rate=2.0, eval_epochs=1)
    private, secured, compressed, distributed_dp, plain, control, tens = paired_round_seconds(
        [private_engine, secure_engine, compressed_engine, distributed_engine, make('shards'), make('shards'),
         by_count], task, 3 * _ROUNDS.value)
    print(f'Control: a second non-private engine {1000 * control:.0f} ms / the first {control / plain:.2f} '
          '(the measurement\'s own error; the rounds below are medians, each engine first in turn)')
    print(f'Shards: the default {1000 * plain:.0f} ms a round, shards of 10 users (--shard_examples=0) '
          f'{1000 * tens:.0f} ms: default / 10 users {plain / tens:.2f}')
    print(f'R3 DP round {1000 * private:.0f} ms, non-private {1000 * plain:.0f} ms  ratio {private / plain:.2f} '
          '(target <= 1.10)')
    print(f'Secure aggregation round {1000 * secured:.0f} ms  / non-private {secured / plain:.2f} (target <= 1.3)')
    print(f'Compression round {1000 * compressed:.0f} ms  / non-private {compressed / plain:.2f} (target <= 1.3)')
    print(f'Distributed DP round {1000 * distributed_dp:.0f} ms  / non-private {distributed_dp / plain:.2f} '
          '(target <= 1.3)')
    if _WORKER_ROUNDS.value:
      one, two = worker_round_seconds(task, _WORKER_ROUNDS.value)
      print(f'Workers: shard-process round, local runtime {1000 * one:.0f} ms, two local worker services (--workers) '
            f'{1000 * two:.0f} ms  ratio {two / one:.2f}')
    if _R4_ROUNDS.value:
      at_10, at_half, at_end = memory_growth_alone(_R4_ROUNDS.value)
      print(f'R4 RSS after round 10: {at_10:,.0f} MB, after round {_R4_ROUNDS.value // 2}: {at_half:,.0f} MB, after '
            f'round {_R4_ROUNDS.value}: {at_end:,.0f} MB  ratio {at_end / at_10:.3f} (target <= 1.10); second half '
            f'{at_end / at_half:.3f}')
  finally:
    runtime.stop_all_workers()
  if not _SKIP_R6.value:
    ours = headline_wall_seconds(_HEADLINE.value)
    print(f'R6 {_HEADLINE.value}: shard process {ours:.0f} s wall to final metrics (target <= 180 s)')


if __name__ == '__main__':
  app.run(main)

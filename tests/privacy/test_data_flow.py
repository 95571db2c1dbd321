"""Nothing but aggregates leaves a client: every CLIENTS -> SERVER value comes from a sum or mean intrinsic."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.compiler import building_blocks  # TFF 0.87 (pinned)

from tff_rec import tasks
from tff_rec.federated import fed_recon
from tff_rec.privacy import dp, secure

AGGREGATIONS = {'federated_sum', 'federated_mean', 'federated_weighted_mean', 'federated_secure_sum',
                'federated_secure_sum_bitwidth', 'federated_secure_modular_sum'}


def _placements(type_spec) -> set:
  if type_spec is None:
    return set()
  if isinstance(type_spec, tff.FederatedType):
    return {type_spec.placement}
  if isinstance(type_spec, tff.StructType):
    return set().union(*(_placements(t) for t in type_spec.children()))
  if isinstance(type_spec, tff.FunctionType):
    return _placements(type_spec.parameter) | _placements(type_spec.result)
  return set()


def client_to_server_intrinsics(computation) -> list[str]:
  """The intrinsics of `computation` that take a CLIENTS value and give a SERVER one."""
  found, stack = [], [computation.to_building_block()]
  while stack:
    node = stack.pop()
    if isinstance(node, building_blocks.Intrinsic):
      signature = node.type_signature
      if tff.CLIENTS in _placements(signature.parameter) and tff.SERVER in _placements(signature.result):
        found.append(node.uri)
    stack.extend(node.children())
  return found


def test_the_check_catches_a_non_aggregating_transfer():
  @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
  def leaky(values):  # federated_aggregate can ship any function of the raw values; not a sum or a mean.
    return tff.federated_aggregate(values, np.float32(0.0), tff.tensorflow.computation(lambda a, v: v),
                                   tff.tensorflow.computation(lambda a, b: b), tff.tensorflow.computation(lambda a: a))

  assert set(client_to_server_intrinsics(leaky)) - AGGREGATIONS == {'federated_aggregate'}


# (--compression is not here: TFF's encoded sum is a federated_aggregate whose accumulate decodes and adds each
# client's quantized update, a sum this syntactic check cannot tell from an arbitrary merge.)
@pytest.mark.parametrize('aggregation', ['plain', 'dp', 'tree', 'secure'])
def test_fed_recon_round_and_evaluation_send_only_aggregates(tiny_dataset, aggregation):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8), embedding_dim=4)
  specs = [tf.TensorSpec(v.shape, v.dtype) for layer in task.model_fn().global_layers
           for v in layer.trainable_variables]
  aggregator = {
      'plain': lambda: None, 'secure': secure.secure_mean,
      'dp': lambda: dp.aggregation_factory(dp.DPConfig(dp.GAUSSIAN_FIXED, 1.0, 0.5), 10.0),
      'tree': lambda: dp.aggregation_factory(dp.DPConfig(dp.TREE, 1.0, 0.5), 10.0, record_specs=specs,
                                             rounds_per_epoch=3),
  }[aggregation]()
  engine = fed_recon.TffEngine(task, fed_recon.ReconConfig(split_dataset=False), eval_learning_rate=0.5,
                               eval_epochs=1, aggregator=aggregator)
  for computation in (engine.process.next, engine._evaluation):
    moved = client_to_server_intrinsics(computation)
    assert moved and set(moved) <= AGGREGATIONS, moved
  if aggregation == 'secure':
    assert 'federated_secure_sum_bitwidth' in client_to_server_intrinsics(engine.process.next)

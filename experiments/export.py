r"""Exports a finished training run's model as a SavedModel that serves recommendations.

  python -m experiments.export --run_dir=runs/demo_fedrecon_mf --export_dir=models/demo [--top_k=10] [--explain=3] \
      [--jit_compile]
  python -m experiments.export --run_dir=runs/demo_fedrecon_mf --export_dir=models/demo_tflite --format=tflite \
      [--quantize=none|float16|dynamic_int8|int8]

The model reconstructs each user from the history a request carries (user
embeddings never leave clients, so the server has none): see
`tff_rec.serving.export` for the signatures. Serve it with
`python -m experiments.serve --export_dir=...` or TF Serving.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import export_flags, logs
from tff_rec import runtime
from tff_rec.serving import export, tflite

_RUN_DIR = flags.DEFINE_string('run_dir', None, 'A finished run: <root_output_dir>/<experiment_name>.')
_FORMAT = flags.DEFINE_enum('format', 'saved_model', list(export.FORMATS), 'saved_model (servers), or tflite: '
                            'model.tflite for on-device inference with the same signatures (docs/serving.md).')
_EXPLAIN = flags.DEFINE_integer('explain', 0, '> 0: `recommend` also returns, for each recommended item, this many '
                               'history items with the largest shares of its score (explanation_item_ids, '
                               'explanation_contributions; docs/serving.md).')
_JIT = flags.DEFINE_bool('jit_compile', False, 'Compile the SavedModel\'s reconstruction (the SGD loop of MF and '
                         'the two-tower query) or the sequence two-tower\'s query tower with XLA: 2-3x faster '
                         'requests on CPU; TF Serving must then run with --xla_cpu_compilation_enabled=true '
                         '(docs/serving.md).')
_QUANTIZE = flags.DEFINE_enum('quantize', 'none', list(tflite.QUANTIZATIONS), '--format=tflite: '
                              'post-training quantisation of the model.')


def main(argv):
  logs.start(argv)
  if not _RUN_DIR.value or not export_flags.EXPORT_DIR.value:
    print('export: error: --run_dir and --export_dir are required', file=sys.stderr)
    return 2
  try:
    metadata = export.export_run(_RUN_DIR.value, export_flags.EXPORT_DIR.value, export_flags.TOP_K.value,
                                 fmt=_FORMAT.value, quantize=_QUANTIZE.value, explain=_EXPLAIN.value,
                                 jit_compile=_JIT.value)
  except (ValueError, FileNotFoundError) as e:
    print(f'export: error: {e}', file=sys.stderr)
    return 2
  finally:
    runtime.stop_all_workers()
  print(export.describe(export_flags.EXPORT_DIR.value, metadata))
  return 0


if __name__ == '__main__':
  app.run(main)

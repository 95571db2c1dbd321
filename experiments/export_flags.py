"""Export flags shared by the export binary and the training binaries (`--export_dir` after training)."""

from __future__ import annotations

from absl import flags

EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'Write the trained model here as a SavedModel (signatures '
                                 'serving_default/recommend and score) with metadata.json beside it.')
TOP_K = flags.DEFINE_integer('top_k', 10, 'Items the exported `recommend` signature returns per user.')

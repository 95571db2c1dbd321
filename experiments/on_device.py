r"""Recommendations computed on the device: one user's history, the TFLite model, no server.

  python -m experiments.export --run_dir=runs/demo_fedrecon_mf --export_dir=models/demo_tflite --format=tflite
  python -m experiments.on_device --model=models/demo_tflite/model.tflite --data_dir=data/movielens_100k --user=42

Reads the user's history from the prepared SQLite ClientData (what the user's device holds: its training
examples, oldest first), runs the model's `recommend` signature through `tflite-runtime` (as an app would; or
TensorFlow's interpreter) and prints the top K with titles. Nothing leaves the process.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from tff_rec.data import histories, schema
from tff_rec.serving import tflite

_MODEL = flags.DEFINE_string('model', None, 'The TFLite model (experiments.export --format=tflite).')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/movielens_100k', 'The prepared dataset the user belongs to.')
_USER = flags.DEFINE_string('user', None, 'The user id (the client id in clients.sqlite).')
_RUNTIME = flags.DEFINE_enum('runtime', 'auto', ['auto', 'tflite_runtime', 'tensorflow'],
                             'Which TFLite interpreter (auto: tflite_runtime when installed).')
_SHOW_HISTORY = flags.DEFINE_integer('show_history', 5, 'How many of the latest history items to print.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _MODEL.value or not _USER.value:
    print('on_device: error: --model and --user are required', file=sys.stderr)
    return 2
  db = os.path.join(_DATA_DIR.value, schema.CLIENTS_DB)
  try:
    history = histories.user_history(db, _USER.value)
    model = tflite.OnDeviceRecommender(_MODEL.value, runtime=_RUNTIME.value)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f'on_device: error: {e.args[0] if isinstance(e, KeyError) else e}', file=sys.stderr)
    return 2
  start = time.perf_counter()
  if model.explains:
    top = model.recommend_explained(history.item_ids, history.ratings)
  else:
    top = [(item, score, []) for item, score in model.recommend(history.item_ids, history.ratings)]
  millis = 1000 * (time.perf_counter() - start)
  names = histories.titles(db, [*history.item_ids[-_SHOW_HISTORY.value:], *(i for i, _, _ in top),
                                *(h for _, _, reasons in top for h, _ in reasons)])
  print(f'user {history.user_id}: {len(history.item_ids)} history items on the device; latest:')
  for item in history.item_ids[-_SHOW_HISTORY.value:][::-1]:
    print(f'  {item:>8}  {names.get(item, "")}')
  print(f'top {len(top)} computed on the device ({os.path.basename(_MODEL.value)}, {millis:.1f} ms):')
  for rank, (item, score, reasons) in enumerate(top, start=1):
    print(f'{rank:3d}. {item:>8}  {score:8.3f}  {names.get(item, "")}')
    if reasons:  # Exported with --explain: the history items with the largest shares of the score.
      print('       because of: ' + '; '.join(f'{names.get(h, h)} ({share:+.3f})' for h, share in reasons))
  return 0


if __name__ == '__main__':
  app.run(main)

"""The model the servers serve: numbered SavedModel versions under a base path, the newest loaded and swapped in.

As TF Serving's file-system storage path source with its default `latest`
version policy (https://www.tensorflow.org/tfx/serving/serving_config): a base
path holds version directories named by integers (`1/`, `2/`, ...); the
highest one holding a `saved_model.pb` is served, and `ModelManager.poll`
(every `poll_seconds` on a background thread) loads a newer one, warms it up
and swaps it in. Requests in flight keep the version they started with, so a
switch drops none. A version that fails to load is logged and skipped (until
its files change); the served one stays. A plain SavedModel directory is
served as version 1, as before versions existed.

`Servable.run` holds the request checks both APIs share (signature, input
names, dtypes, ranks, batch and list sizes): a request that fails them never
reaches the model.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

DEFAULT_SIGNATURE = 'serving_default'
SAVED_MODEL_PB = 'saved_model.pb'


class BadRequest(Exception):
  """A request the model must not see (TF Serving's INVALID_ARGUMENT); the message goes back to the client."""


class ServableNotFound(Exception):
  """A model name or version this server does not serve (TF Serving's NOT_FOUND)."""


def not_found(model: str, version: int | None) -> ServableNotFound:
  wanted = f'Latest({model})' if version is None else f'Specific({model}, {version})'
  return ServableNotFound(f'Servable not found for request: {wanted}')


class Servable:
  """One loaded version of an exported SavedModel (`tff_rec.serving.export`).

  Args:
    path: The version's SavedModel directory.
    version: Its version number.
    max_batch_size: Largest batch a request may carry.
    max_list_length: Largest number of values one example's input may carry.
  """

  def __init__(self, path: str, version: int, *, max_batch_size: int, max_list_length: int):
    self.path, self.version = path, version
    self.max_batch_size, self.max_list_length = max_batch_size, max_list_length
    self.model = tf.saved_model.load(path)
    self.signatures = dict(self.model.signatures)
    self.inputs: dict[str, dict[str, tf.TensorSpec]] = {
        name: fn.structured_input_signature[1] for name, fn in self.signatures.items()}
    self.signature_defs = _signature_defs(path)
    self.signature_defs_json = {name: json_format.MessageToDict(d, preserving_proto_field_name=True)
                                for name, d in self.signature_defs.items()}

  def check_signature(self, name: Any) -> str:
    if not isinstance(name, str) or name not in self.signatures:
      raise BadRequest(f'Serving signature name: "{name}" not found in signature def')
    return name

  def run(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calls signature `name` on `arrays` (input name -> array); raises BadRequest naming what is wrong."""
    specs = self.inputs[self.check_signature(name)]
    check_names(arrays, specs, 'inputs')
    tensors = {}
    for key, spec in specs.items():
      array = arrays[key]
      if array.ndim != len(spec.shape):
        raise BadRequest(f'Input "{key}" must have rank {len(spec.shape)} ([batch, n] values), got shape '
                         f'{list(array.shape)}')
      if array.shape[0] > self.max_batch_size:
        raise BadRequest(f'Batch size {array.shape[0]} exceeds the maximum of {self.max_batch_size}')
      if array.shape[0] == 0:
        raise BadRequest(f'Input "{key}" is empty: a request needs at least one example')
      if array.shape[1] > self.max_list_length:
        raise BadRequest(f'Input "{key}" has {array.shape[1]} values per example; the maximum is '
                         f'{self.max_list_length}')
      if spec.dtype == tf.string:
        if array.dtype != object:
          raise BadRequest(f'Input "{key}" must hold strings ({spec.dtype.name}), got {array.dtype.name}')
      elif array.dtype.kind not in 'fiu' or not np.all(np.isfinite(array)):
        raise BadRequest(f'Input "{key}" must hold finite numbers ({spec.dtype.name})')
      tensors[key] = tf.constant(array, spec.dtype)
    batches = {t.shape[0] for t in tensors.values()}
    if len(batches) != 1:
      raise BadRequest(f'All inputs must have the same batch size, got {sorted(batches)}')
    try:
      outputs = self.signatures[name](**tensors)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
      raise BadRequest(model_error(str(getattr(e, 'message', e)))) from e
    return {key: value.numpy() for key, value in outputs.items()}

  def warm_up(self) -> None:
    """One call of each signature with a one-item history, so the first request after a switch is not slower."""
    for name, specs in self.inputs.items():
      self.signatures[name](**{key: tf.constant([['']] if spec.dtype == tf.string else [[0]], spec.dtype)
                               for key, spec in specs.items()})


def check_names(given: dict, specs: dict[str, tf.TensorSpec], where: str) -> None:
  missing, extra = sorted(set(specs) - set(given)), sorted(set(given) - set(specs))
  if missing or extra:
    raise BadRequest(f'{where}: missing inputs {missing}, unexpected inputs {extra}; the signature takes '
                     f'{sorted(specs)}')


def model_error(message: str) -> str:
  """The model's own words from a TF error: the failed assertion's message and values, without graph details."""
  found = re.search(r'assertion failed: (.*)', message)
  if found:
    return ' '.join(re.findall(r'\[([^\[\]]*)\]', found.group(1)))
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return lines[-1] if lines else 'the model rejected the request'


def _signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
  """The SavedModel's serving SignatureDefs (TF Serving's metadata), without the internal `__...` ones."""
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(path, SAVED_MODEL_PB), 'rb') as f:
    saved_model.ParseFromString(f.read())
  defs = saved_model.meta_graphs[0].signature_def
  return {name: defs[name] for name in defs if not name.startswith('__')}


def available_versions(base_path: str) -> dict[int, str]:
  """Version number -> directory, for each `base_path/<integer>/` holding a SavedModel."""
  found = {}
  for name in os.listdir(base_path):
    path = os.path.join(base_path, name)
    if name.isdigit() and os.path.exists(os.path.join(path, SAVED_MODEL_PB)):
      found[int(name)] = path
  return found


class ModelManager:
  """Serves the newest version under a base path and picks up new ones without a restart.

  Args:
    model_name: The model's NAME in requests.
    source: A base path of numbered version directories, or one SavedModel directory (served as version 1).
    poll_seconds: How often `start`'s thread looks for a new version (TF Serving's
      --file_system_poll_wait_seconds).
    on_load: Called with (version, outcome) after each load attempt ('ok' or 'error'); monitoring counts them.
    max_batch_size, max_list_length: Each version's request limits (`Servable`).
  """

  def __init__(self, model_name: str, source: str, *, poll_seconds: float = 1.0, on_load=None,
               max_batch_size: int = 256, max_list_length: int = 10_000):
    if max_batch_size < 1 or max_list_length < 1:
      raise ValueError(f'max_batch_size and max_list_length must be >= 1, got {max_batch_size}, {max_list_length}')
    if poll_seconds <= 0:
      raise ValueError(f'poll_seconds must be > 0, got {poll_seconds}')
    self.model_name, self.source, self.poll_seconds = model_name, source, poll_seconds
    self._limits = {'max_batch_size': max_batch_size, 'max_list_length': max_list_length}
    self._on_load = on_load or (lambda version, outcome: None)
    self._single = os.path.exists(os.path.join(source, SAVED_MODEL_PB))
    if not self._single and not (os.path.isdir(source) and available_versions(source)):
      raise FileNotFoundError(
          f'{source} is not a SavedModel directory (no saved_model.pb) nor a base path of numbered versions '
          f'({os.path.join(source, "1", SAVED_MODEL_PB)}, ...); export one with `python -m experiments.export`')
    self._failed: dict[int, tuple] = {}  # Version -> the files (`_fingerprint`) that failed to load.
    self._servable: Servable | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    if self._single:
      self._servable = self._load(source, 1)
      self._on_load(1, 'ok')
    elif not self.poll():
      raise FileNotFoundError(f'no version under {source} could be loaded (see the log)')

  def _load(self, path: str, version: int) -> Servable:
    servable = Servable(path, version, **self._limits)
    servable.warm_up()
    return servable

  @property
  def current(self) -> Servable:
    return self._servable

  def servable(self, model: str | None, version: int | None = None) -> Servable:
    """The servable a request names; raises ServableNotFound (as TF Serving) for another model or version."""
    servable = self._servable  # One read: a concurrent switch cannot change the version mid-request.
    if model != self.model_name or version not in (None, servable.version):
      raise not_found(model, version)
    return servable

  def poll(self) -> bool:
    """Loads and swaps in the newest version if it is not the one served; returns whether one was swapped in."""
    if self._single:
      return False
    try:
      versions = available_versions(self.source)
    except OSError as e:
      logging.warning('serve: cannot list %s: %s; still serving version %s', self.source, e,
                      self._servable and self._servable.version)
      return False
    for version in sorted(versions, reverse=True):
      if self._servable is not None and version == self._servable.version:
        return False
      path = versions[version]
      files = _fingerprint(path)
      if self._failed.get(version) == files:
        continue  # Failed before and unchanged since: the next older version is the candidate.
      try:
        servable = self._load(path, version)
      except Exception as e:  # pylint: disable=broad-except  # Whatever breaks a load must not stop serving.
        self._failed[version] = files
        self._on_load(version, 'error')
        logging.error('serve: version %d at %s failed to load (%s: %s); %s', version, path, type(e).__name__, e,
                      f'still serving version {self._servable.version}' if self._servable else 'not serving it')
        continue
      old = self._servable
      self._servable = servable
      self._on_load(version, 'ok')
      logging.info('serve: %s version %d loaded from %s%s', self.model_name, version, path,
                   f' (replaces version {old.version})' if old else '')
      return True
    return False

  def start(self) -> None:
    """Polls for new versions every `poll_seconds` on a daemon thread until `stop`."""
    if self._single or self._thread is not None:
      return
    def loop():
      while not self._stop.wait(self.poll_seconds):
        self.poll()
    self._thread = threading.Thread(target=loop, name='version-poller', daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=60)


def _fingerprint(path: str) -> tuple:
  """Every file under a version directory with its size and mtime: a version copied in file by file (not renamed
  into place) that failed half-copied is tried again once the copy has changed it."""
  files = []
  for root, _, names in os.walk(path):
    for name in names:
      try:
        stat = os.stat(os.path.join(root, name))
      except OSError:
        continue
      files.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
  return tuple(sorted(files))

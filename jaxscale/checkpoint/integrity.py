"""Checksum manifests of finished checkpoints, and the one verdict all processes act on.

Orbax writes a step atomically but cannot tell, later, whether its bytes are still the ones it
wrote: a flipped block in an array file restores without complaint (it changed Adam's `nu` in
one run). So once Orbax has finalized a step, each process hashes its share of the step's files
(every `process_count`-th, by sorted path) off the training thread and writes
`<step>/checksums.process_<i>.json`. On restore each process checks its share again (of the
union of the manifests, so the process count may change) and all processes take the worst
verdict, so they all act alike:

- `OK`: every file matches its recorded size and SHA-256;
- `UNVERIFIED`: no manifest (a run stopped between Orbax's commit and the manifest);
- `UNREADABLE`: a file could not be read even after retries, which may be transient (a network
  file system, an overloaded host): never treated as damage;
- `DAMAGED`: a recorded file is missing, or its size or checksum differs: verified damage.
"""

import hashlib
import json
import threading
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

MANIFEST_PREFIX = 'checksums.process_'
OK, UNVERIFIED, UNREADABLE, DAMAGED = 0, 1, 2, 3
VERDICT_NAMES = {OK: 'ok', UNVERIFIED: 'unverified', UNREADABLE: 'unreadable', DAMAGED: 'damaged'}
READ_ATTEMPTS = 3
_CHUNK_BYTES = 8 << 20


def retry_transient(function, what: str, attempts: int = READ_ATTEMPTS, delay_s: float = 0.5):
  """function(), retried with a growing pause when it raises; the last error propagates."""
  for attempt in range(1, attempts + 1):
    try:
      return function()
    except Exception as e:  # noqa: BLE001  (file systems raise many types for one hiccup)
      if attempt == attempts:
        raise
      logging.warning('Reading %s failed (%s: %s); retrying (%d of %d).', what,
                      type(e).__name__, str(e).splitlines()[0][:200], attempt + 1, attempts)
      time.sleep(delay_s * attempt)


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def _data_files(step_dir: epath.Path) -> list[str]:
  """Paths (relative to `step_dir`, sorted) of the files a restore reads; manifests excluded."""
  files = []
  pending = [step_dir]
  while pending:
    for child in pending.pop().iterdir():
      if child.is_dir():
        pending.append(child)
      elif not child.name.startswith(MANIFEST_PREFIX):
        files.append(str(child.relative_to(step_dir)))
  return sorted(files)


def write_manifest(step_dir: epath.Path):
  """Hashes this process's share of a finalized step's files into its manifest."""
  step_dir = epath.Path(step_dir)
  mine = _data_files(step_dir)[jax.process_index()::jax.process_count()]
  entries = {name: {'bytes': (step_dir / name).stat().length, 'sha256': _sha256(step_dir / name)}
             for name in mine}
  (step_dir / f'{MANIFEST_PREFIX}{jax.process_index()}.json').write_text(
      json.dumps({'algorithm': 'sha256', 'files': entries}, indent=1))


class ManifestWriter:
  """Writes a step's manifest in a background thread; `wait()` joins it (and re-raises)."""

  def __init__(self):
    self._thread, self._error = None, None

  def start(self, step_dir: epath.Path):
    self.wait()

    def work():
      try:
        write_manifest(step_dir)
      except Exception as e:  # noqa: BLE001  (reported by wait(), on the training thread)
        self._error = e

    self._thread = threading.Thread(target=work, name='checkpoint-manifest', daemon=True)
    self._thread.start()

  def wait(self):
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._error is not None:
      error, self._error = self._error, None
      logging.warning('Writing the checksum manifest failed (%s: %s); that checkpoint will '
                      'restore unverified.', type(error).__name__, error)


def _recorded(step_dir: epath.Path) -> dict[str, dict] | None:
  manifests = sorted(p for p in step_dir.iterdir() if p.name.startswith(MANIFEST_PREFIX))
  if not manifests:
    return None
  recorded = {}
  for path in manifests:
    recorded.update(json.loads(retry_transient(path.read_text, str(path)))['files'])
  return recorded


def local_verdict(step_dir: epath.Path) -> tuple[int, str]:
  """(verdict, why) for this process's share of the recorded files."""
  step_dir = epath.Path(step_dir)
  try:
    recorded = _recorded(step_dir)
  except Exception as e:  # noqa: BLE001
    return UNREADABLE, f'manifest: {type(e).__name__}: {e}'
  if recorded is None:
    return UNVERIFIED, 'no checksum manifest'
  for name in sorted(recorded)[jax.process_index()::jax.process_count()]:
    path, expected = step_dir / name, recorded[name]
    if not path.exists():
      return DAMAGED, f'{name} is missing'
    try:
      size, digest = retry_transient(lambda p=path: (p.stat().length, _sha256(p)), str(path))
    except Exception as e:  # noqa: BLE001
      return UNREADABLE, f'{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}'
    if size != expected['bytes']:
      return DAMAGED, f'{name} has {size} bytes, {expected["bytes"]} recorded'
    if digest != expected['sha256']:
      return DAMAGED, f'{name} does not match its recorded SHA-256'
  return OK, 'checksums match'


def agreed(local: int) -> int:
  """The largest of every process's `local` value (the worst verdict, or any failure)."""
  if jax.process_count() == 1:
    return local
  return int(np.max(multihost_utils.process_allgather(np.asarray(local, np.int32))))

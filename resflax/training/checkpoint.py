"""Training-state checkpoints on top of Orbax (the only module importing it).

Layout on disk (Orbax >= 0.11, default options)::

    <directory>/
      1000/                          a complete checkpoint (step 1000)
        _CHECKPOINT_METADATA
        commit_success.txt           (written by Orbax >= 0.12 before rename)
        default/...                  OCDBT/zarr array store
        resflax_checksums.json       written by this module, see below
      2000.orbax-checkpoint-tmp/     a save that never finished (process killed)
      1500.resflax-corrupt/          a checkpoint this module set aside

How completeness is decided. On a POSIX filesystem Orbax writes each step into
`<step>.orbax-checkpoint-tmp` (older releases appended `-<timestamp>`; the
item inside is likewise `default.orbax-checkpoint-tmp` until it is renamed)
and renames it to `<step>` only after every array and metadata file is
written, so a process killed mid-save leaves only the temporary directory,
which Orbax never lists as a step (and which `cleanup_tmp_directories` deletes
on the next start). On object stores Orbax instead marks completion with
`commit_success.txt`; either way only steps that
`CheckpointManager.all_steps()` lists are considered.

Retention (`max_to_keep`) deletes old steps only after a newer one committed,
but Orbax deletes in place: a kill during that deletion can leave an old,
half-deleted step that still looks complete. It is the oldest one, so it only
matters if every newer step is unreadable, and then the checksums catch it.

How corruption is detected. Orbax/tensorstore detect truncated files and
damaged OCDBT b-tree nodes (they carry CRC-32C), but array *values* have no
checksum: a flipped bit in a data file restores silently. After a save has
completed, this module therefore fsyncs every file of the step and records
each file's size and CRC-32 in `resflax_checksums.json`; restore verifies them
first. Steps without that file (e.g. the process died between Orbax's rename
and the checksum write, or written by other tools) are still restored and rely
on Orbax's own checks.

Multi-process use: Orbax coordinates hosts itself, so *every* process must
call `save`, `restore`, `restore_latest_good` and `close` with the same
arguments (they contain barriers); only process 0 writes the checksum file and
renames corrupt checkpoints, and processes agree on which checkpoint restored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from resflax import fileio as results
from resflax.errors import CheckpointError

PyTree = Any

CHECKSUM_FILE = 'resflax_checksums.json'
CORRUPT_SUFFIX = '.resflax-corrupt'
# Orbax's marker for unfinished saves (`<step>.orbax-checkpoint-tmp` in 0.11.40
# and 0.12, `<step>.orbax-checkpoint-tmp-<timestamp>` in older releases);
# matched as a substring so both spellings are recognised.
_ORBAX_TMP_MARKER = '.orbax-checkpoint-tmp'
_CHECKSUM_VERSION = 1
_MUTABLE_FILES = frozenset({'_CHECKPOINT_METADATA'})
_READ_CHUNK = 1 << 22




def _is_local(directory: str) -> bool:
  # Checksums, fsync and quarantine use plain `os` calls, which only work on
  # mounted filesystems; for gs:// and friends we rely on Orbax alone.
  return '://' not in directory


def _file_crc32(path: str, *, fsync: bool) -> tuple[int, int]:
  crc = 0
  size = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_READ_CHUNK):
      crc = zlib.crc32(chunk, crc)
      size += len(chunk)
    if fsync:
      os.fsync(f.fileno())
  return size, crc


def _scan_step_files(step_dir: str, *, fsync: bool) -> dict[str, list[int]]:
  """Returns {relative path: [size, crc32]} for all files under `step_dir`."""
  files = {}
  for root, dirs, names in os.walk(step_dir):
    dirs.sort()
    for name in sorted(names):
      full = os.path.join(root, name)
      rel = os.path.relpath(full, step_dir)
      crc = _file_crc32(full, fsync=fsync)
      # Our own manifest (and write_atomic's leftovers of it) cannot checksum
      # itself, and Orbax may legitimately rewrite the step-level metadata
      # file (timestamps, custom metadata) after commit; restore does not
      # depend on the latter.
      if name.startswith(('.' + CHECKSUM_FILE, CHECKSUM_FILE)) or (
          rel in _MUTABLE_FILES
      ):
        continue
      files[rel] = list(crc)
    if fsync:
      results.fsync_dir(root)
  return files


def _verify_step_files(step_dir: str) -> bool:
  """Checks `step_dir` against its checksum file.

  Args:
    step_dir: A complete step directory.

  Returns:
    True if the checksum file exists and every file matches, False if there is
    no checksum file (nothing to verify).

  Raises:
    CheckpointError: If a listed file is missing, has another size or CRC, or
      the checksum file itself is unreadable.
  """
  manifest_path = os.path.join(step_dir, CHECKSUM_FILE)
  if not os.path.exists(manifest_path):
    return False
  try:
    with open(manifest_path, 'r', encoding='utf-8') as f:
      manifest = json.load(f)
    expected = manifest['files']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f'unreadable checksum file {manifest_path}: {type(e).__name__}: {e}'
    ) from e
  for rel, (size, crc) in sorted(expected.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      raise CheckpointError(f'missing file {full}')
    actual_size, actual_crc = _file_crc32(full, fsync=False)
    if actual_size != size:
      raise CheckpointError(
          f'file {full} has {actual_size} bytes, expected {size} (truncated?)'
      )
    if actual_crc != crc:
      raise CheckpointError(
          f'file {full} fails its CRC-32 check (expected {crc:#010x}, got'
          f' {actual_crc:#010x})'
      )
  return True


def _restore_target(x: Any) -> Any:
  """Turns one target leaf into what `StandardRestore` should produce."""
  if isinstance(x, jax.Array):
    # Restoring onto the target's sharding (e.g. a NamedSharding over a mesh)
    # rather than the one recorded at save time, which may name devices that
    # do not exist in this job.
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
    # Orbax restores sharding-less abstract leaves as numpy arrays. In a
    # single-process job the obvious intent (e.g. `jax.eval_shape(init)`) is a
    # device array; with several processes there is no safe default.
    if jax.process_count() == 1:
      return jax.ShapeDtypeStruct(
          x.shape,
          x.dtype,
          sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
      )
  return x


def _all_processes_agree(ok: bool) -> bool:
  """Returns True iff `ok` is True on every process (collective)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  flags = multihost_utils.process_allgather(np.asarray(ok, dtype=np.int32))
  return bool(np.all(flags))


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)


def _manager_options(max_to_keep: int | None) -> Any:
  """Builds CheckpointManagerOptions for the installed Orbax version."""
  kwargs = dict(
      create=True,
      # Saves interrupted by a kill leave `<step>.orbax-checkpoint-tmp`
      # directories; they can never become valid, so reclaim the space.
      cleanup_tmp_directories=True,
      enable_async_checkpointing=True,
  )
  fields = {f.name for f in dataclasses.fields(ocp.CheckpointManagerOptions)}
  latest_n = getattr(getattr(ocp, 'checkpoint_managers', None), 'LatestN', None)
  if max_to_keep is not None and 'preservation_policy' in fields and latest_n:
    # `max_to_keep` is deprecated from 0.12 on in favour of policies; keep the
    # old spelling only for versions without them (0.11.x).
    kwargs['preservation_policy'] = latest_n(n=max_to_keep)
  else:
    kwargs['max_to_keep'] = max_to_keep
  return ocp.CheckpointManagerOptions(**kwargs)


class Checkpointer:
  """Saves and restores a training-state pytree under one directory.

  All processes of a multi-process job must construct it with the same
  directory and call `save`/`restore*`/`close` together (see module docs).

  Example::

    ckpt = Checkpointer(workdir + '/checkpoints', max_to_keep=3)
    restored = ckpt.restore_latest_good(state)
    if restored is not None:
      start_step, state = restored
    ...
    ckpt.save(step, state, wait=False)   # returns while writing continues
    ...
    ckpt.close()                         # waits; raises if that save failed
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      max_to_keep: int | None = 3,
      verify_checksums: bool = True,
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: Root directory of this run's checkpoints. Local paths are made
        absolute; `gs://...` style paths are passed to Orbax unchanged (then
        checksums and quarantine are skipped).
      max_to_keep: How many most recent complete checkpoints to keep; None
        keeps all. Older ones are deleted only after a newer save succeeded.
      verify_checksums: Write CRC-32 checksums after each save and verify them
        before each restore (local filesystems only).

    Raises:
      CheckpointError: If the directory cannot be created or opened.
    """
    directory = os.fspath(directory)
    self._local = _is_local(directory)
    if self._local:
      directory = os.path.abspath(directory)
    self._directory = directory
    self._checksums = verify_checksums and self._local
    self._pending_step: int | None = None
    self._closed = False
    # Look before Orbax's start-up cleanup deletes them, so the log records
    # that a save was interrupted.
    self._reported_incomplete = set(self._tmp_dirs())
    if self._reported_incomplete:
      logging.warning(
          'Found %d unfinished checkpoint save(s) (process stopped while'
          ' saving); they are not restorable and will be removed: %s',
          len(self._reported_incomplete),
          ', '.join(sorted(self._reported_incomplete)),
      )
    try:
      self._manager = ocp.CheckpointManager(
          directory, options=_manager_options(max_to_keep)
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot open checkpoint directory {directory}: {type(e).__name__}:'
          f' {e}'
      ) from e

  @property
  def directory(self) -> str:
    """The checkpoint root directory."""
    return self._directory

  def step_path(self, step: int) -> str:
    """Returns the directory of checkpoint `step` (whether or not it exists)."""
    return os.path.join(self._directory, str(step))

  def all_steps(self) -> list[int]:
    """Returns the steps of all complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Returns the newest complete checkpoint's step, or None if there is none.

    "Complete" means Orbax finished writing it; whether it is also readable is
    only known after restoring (see `restore_latest_good`).
    """
    return self._manager.latest_step()

  def _tmp_dirs(self) -> list[str]:
    if not self._local or not os.path.isdir(self._directory):
      return []
    return [
        os.path.join(self._directory, name)
        for name in sorted(os.listdir(self._directory))
        if _ORBAX_TMP_MARKER in name
    ]

  def incomplete_paths(self) -> list[str]:
    """Returns directories left by interrupted saves (never restorable).

    Only meaningful on local filesystems; returns [] elsewhere.
    """
    if not self._local or not os.path.isdir(self._directory):
      return []
    complete = {str(s) for s in self._manager.all_steps()}
    found = []
    for name in sorted(os.listdir(self._directory)):
      full = os.path.join(self._directory, name)
      if not os.path.isdir(full):
        continue
      if _ORBAX_TMP_MARKER in name or (name.isdigit() and name not in complete):
        # Digit-only directories that Orbax does not list lack their commit
        # marker (commit-file atomicity mode), i.e. they are unfinished too.
        found.append(full)
    return found

  # -- saving -----------------------------------------------------------------

  def save(self, step: int, state: PyTree, *, wait: bool = True) -> bool:
    """Saves `state` as checkpoint `step`.

    Must be called by all processes. With `wait=False` the arrays are copied
    off the device before returning and written in the background; a failure
    then surfaces as `CheckpointError` from the next `save`,
    `wait_until_finished` or `close`.

    Args:
      step: Training step (the checkpoint's name). A step that already has a
        complete checkpoint is not overwritten.
      state: Pytree of jax/numpy arrays and Python scalars (e.g. a flax
        TrainState). Store PRNG keys as `jax.random.key_data(key)` (uint32);
        typed key arrays also work with Orbax 0.12 but not necessarily with
        other versions. With several processes every jax.Array must be a
        global array (e.g. the output of a jitted function with NamedSharding
        out_shardings); Orbax rejects host-local single-device arrays there.
      wait: If True, return only once the checkpoint is complete, fsynced and
        checksummed.

    Returns:
      True if a checkpoint was written (or started), False if `step` already
      had a complete checkpoint (e.g. saving again right after resuming).

    Raises:
      CheckpointError: If this save (or a previous background save) failed.
        Older checkpoints are left intact.
    """
    self._check_open()
    self.wait_until_finished()
    if step in self._manager.all_steps():
      logging.info(
          'Checkpoint for step %d already exists at %s; not saving again.',
          step,
          self.step_path(step),
      )
      return False
    path = self.step_path(step)
    try:
      saved = self._manager.save(
          step, args=ocp.args.StandardSave(state), force=True
      )
    except Exception as e:  # pylint: disable=broad-except
      self._after_failed_save()
      raise CheckpointError(
          f'failed to save checkpoint step {step} to {path}:'
          f' {type(e).__name__}: {e}'
      ) from e
    if not saved:
      # force=True should make this unreachable; never report success falsely.
      self._after_failed_save()
      raise CheckpointError(f'Orbax declined to save step {step} to {path}')
    self._pending_step = step
    if wait:
      self.wait_until_finished()
    return True

  def wait_until_finished(self) -> None:
    """Blocks until a background save is complete, fsynced and checksummed.

    Raises:
      CheckpointError: If the background save failed.
    """
    if self._pending_step is None:
      return
    step, self._pending_step = self._pending_step, None
    path = self.step_path(step)
    try:
      self._manager.wait_until_finished()
      if hasattr(self._manager, 'check_for_errors'):
        self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._after_failed_save()
      raise CheckpointError(
          f'failed to save checkpoint step {step} to {path}:'
          f' {type(e).__name__}: {e}'
      ) from e
    if self._local:
      if not os.path.isdir(path):
        self._after_failed_save()
        raise CheckpointError(
            f'checkpoint step {step} was not written: {path} does not exist'
        )
      if jax.process_index() == 0:
        try:
          self._seal(step, path)
        except OSError as e:
          raise CheckpointError(
              f'checkpoint step {step} at {path} was written but could not be'
              f' fsynced/checksummed: {type(e).__name__}: {e}'
          ) from e
    _sync_processes(f'resflax_checkpoint_sealed_{step}')

  def _seal(self, step: int, path: str) -> None:
    """Fsyncs the step's files and records their checksums."""
    files = _scan_step_files(path, fsync=True)
    if self._checksums:
      results.write_atomic(
          os.path.join(path, CHECKSUM_FILE),
          json.dumps(
              {'version': _CHECKSUM_VERSION, 'step': step, 'files': files},
              sort_keys=True,
              indent=1,
          ),
      )
    results.fsync_dir(self._directory)

  def _after_failed_save(self) -> None:
    # Orbax drops steps it planned to garbage-collect from its in-memory list
    # before writing; re-read the directory so that list matches the disk.
    try:
      self._manager.reload()
    except Exception:  # pylint: disable=broad-except
      logging.exception('Reloading checkpoint list of %s failed', self._directory)

  # -- restoring --------------------------------------------------------------

  def restore(self, target: PyTree, step: int | None = None) -> tuple[int, PyTree]:
    """Restores checkpoint `step` (default: the latest complete one).

    Args:
      target: Pytree giving the structure, dtypes and shardings to restore
        into: concrete arrays (their `.sharding`, e.g. a NamedSharding, is
        used) or `jax.ShapeDtypeStruct`s (with or without sharding; without
        one, a single-process job gets arrays on its first device) or numpy
        arrays (restored as numpy).
      step: Step to restore; None means the latest complete checkpoint.

    Returns:
      `(step, state)`.

    Raises:
      CheckpointError: If there is no checkpoint, or it fails verification or
        does not match `target` (shape, structure).
    """
    self._check_open()
    self.wait_until_finished()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise CheckpointError(f'no complete checkpoint in {self._directory}')
    try:
      return step, self._restore_step(step, target)
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot restore checkpoint {self.step_path(step)}:'
          f' {type(e).__name__}: {e}'
      ) from e

  def _restore_step(self, step: int, target: PyTree) -> PyTree:
    path = self.step_path(step)
    if self._checksums:
      _verify_step_files(path)
    abstract = jax.tree.map(_restore_target, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest_good(
      self, target: PyTree, *, quarantine: bool = True
  ) -> tuple[int, PyTree] | None:
    """Restores the newest checkpoint that is intact, falling back if needed.

    Tries complete checkpoints from newest to oldest. A checkpoint that fails
    (checksum mismatch, truncated or missing files, unreadable metadata) is
    logged as a WARNING naming its path and the error, and the next older one
    is tried. Unfinished saves are never candidates.

    Args:
      target: As for `restore`.
      quarantine: If an older checkpoint restores, rename the newer broken ones
        to `<step>.resflax-corrupt` (kept for inspection, invisible to Orbax)
        so that later saves at those steps and `latest_step()` are not blocked
        or misled by them.

    Returns:
      `(step, state)`, or None if the directory holds no complete checkpoint
      (a fresh run).

    Raises:
      CheckpointError: If complete checkpoints exist but none restores; the
        message names each one and its error. Nothing is renamed then.
    """
    self._check_open()
    self.wait_until_finished()
    incomplete = [
        p for p in self.incomplete_paths() if p not in self._reported_incomplete
    ]
    if incomplete:
      logging.warning(
          'Ignoring %d unfinished checkpoint save(s) (process stopped while'
          ' saving): %s',
          len(incomplete),
          ', '.join(incomplete),
      )
    failures: list[tuple[int, str, str]] = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      path = self.step_path(step)
      error = None
      restored = None
      try:
        restored = self._restore_step(step, target)
      except Exception as e:  # pylint: disable=broad-except
        error = f'{type(e).__name__}: {e}'
      if not _all_processes_agree(error is None):
        error = error or 'restore failed on another process'
        logging.warning(
            'Checkpoint %s cannot be restored (%s); trying an older one.',
            path,
            error,
        )
        failures.append((step, path, error))
        continue
      if failures:
        logging.warning(
            'Restored checkpoint %s after skipping %d newer unreadable'
            ' one(s): %s',
            path,
            len(failures),
            ', '.join(p for _, p, _ in failures),
        )
        if quarantine:
          self._quarantine([s for s, _, _ in failures])
      return step, restored
    if failures:
      details = '; '.join(f'{p}: {err}' for _, p, err in failures)
      raise CheckpointError(
          f'{len(failures)} checkpoint(s) in {self._directory} exist but none'
          f' can be restored (refusing to start over): {details}'
      )
    return None

  def _quarantine(self, steps: Sequence[int]) -> None:
    if not self._local:
      return
    if jax.process_index() == 0:
      stamp = time.strftime('%Y%m%d-%H%M%S')
      for step in steps:
        src = self.step_path(step)
        dst = f'{src}{CORRUPT_SUFFIX}'
        if os.path.exists(dst):
          dst = f'{src}{CORRUPT_SUFFIX}-{stamp}'
        try:
          os.rename(src, dst)
          logging.warning('Moved unreadable checkpoint %s to %s', src, dst)
        except OSError as e:
          logging.warning('Could not move unreadable checkpoint %s: %s', src, e)
      results.fsync_dir(self._directory)
    _sync_processes('resflax_checkpoint_quarantine')
    self._manager.reload()

  # -- lifetime ---------------------------------------------------------------

  def close(self) -> None:
    """Waits for a background save and releases Orbax resources.

    Raises:
      CheckpointError: If the background save failed (resources are still
        released).
    """
    if self._closed:
      return
    try:
      self.wait_until_finished()
    finally:
      self._closed = True
      self._manager.close()

  def _check_open(self) -> None:
    if self._closed:
      raise CheckpointError(f'Checkpointer for {self._directory} is closed')

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

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

How completeness is decided. On a POSIX filesystem Orbax renames the
temporary directory to `<step>` only after every file is written, so a killed
save leaves only the temporary one, which Orbax never lists as a step (and
deletes on the next start); on object stores `commit_success.txt` marks
completion. Retention deletes in place, so a kill during it can leave an old,
half-deleted step that looks complete; the checksums catch it.

How corruption is detected. Orbax/tensorstore detect truncated files and
damaged OCDBT b-tree nodes (they carry CRC-32C), but array *values* have no
checksum: a flipped bit in a data file restores silently. After each save this
module therefore fsyncs every file of the step and records each file's size and
CRC-32 in `resflax_checksums.json` (sealing it, at the first `poll`, `save` or
`wait` after Orbax committed it); restore verifies them first. A step without
that file (killed between commit and seal, or written by another tool) is
unverified: never taken over an older sealed step (it is set aside as
`<step>.resflax-unverified`), restored with a warning when no step is sealed.

Only proof of corruption sets a checkpoint aside and falls back to an older
one: a checksum mismatch (`_Corrupt`) or an error that tensorstore or Orbax
raise for undecodable data (`_is_corruption`). Anything else (permissions, out
of memory, a target that does not match, an unknown error) says nothing about
the data, and falling back would silently throw training away, so
`restore_latest_good` stops with that error instead.

Multi-process use: Orbax coordinates hosts itself, so *every* process must
call `save`, `restore`, `restore_latest_good` and `close` with the same
arguments (they contain barriers); only process 0 writes the checksum file and
renames corrupt checkpoints, and processes agree on which checkpoint restored.
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from resflax import fileio, logs
from resflax.errors import CheckpointError
from resflax.training import checkpoint_errors as errors_lib
from resflax.training import checksums

PyTree = Any

CHECKSUM_FILE = checksums.CHECKSUM_FILE
CORRUPT_SUFFIX = ".resflax-corrupt"
UNVERIFIED_SUFFIX = ".resflax-unverified"
# Orbax's marker for unfinished saves (`<step>.orbax-checkpoint-tmp`, with
# `-<timestamp>` appended before 0.11.40); a substring matches both.
_ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"
_ITEM = "default"  # the item name Orbax gives a StandardSave
# Outcomes of one restore attempt, ordered so that processes agree on the max.
_OK, _CORRUPT, _FAILED = 0, 1, 2


def _is_local(directory: str) -> bool:
  # Checksums, fsync and quarantine use plain `os` calls, which only work on
  # mounted filesystems; for gs:// and friends we rely on Orbax alone.
  return "://" not in directory


def _save_error(error: BaseException | None) -> str:
  # A full disk hides deep in tensorstore's long message (or the cause): say so.
  text, e = errors_lib.describe(error), error
  while e is not None and "No space left on device" not in str(e):
    e = e.__cause__ or e.__context__
  return (
      f"No space left on device ({text})"
      if e is not None and "No space left" not in text
      else text
  )


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
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
  return x


def _worst_outcome(outcome: int) -> int:
  """Returns the largest `outcome` over all processes (collective)."""
  if jax.process_count() == 1:
    return outcome
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  outcomes = multihost_utils.process_allgather(np.asarray(outcome, np.int32))
  return int(np.max(outcomes))


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
  latest_n = getattr(getattr(ocp, "checkpoint_managers", None), "LatestN", None)
  if max_to_keep is not None and "preservation_policy" in fields and latest_n:
    # `max_to_keep` is deprecated from 0.12 on in favour of policies; keep the
    # old spelling only for versions without them (0.11.x).
    kwargs["preservation_policy"] = latest_n(n=max_to_keep)
  else:
    kwargs["max_to_keep"] = max_to_keep
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
      self, directory: str | os.PathLike, *, max_to_keep: int | None = 3
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: Root directory of this run's checkpoints. Local paths are made
        absolute; `gs://...` style paths are passed to Orbax unchanged (then
        checksums and quarantine are skipped).
      max_to_keep: How many most recent complete checkpoints to keep; None
        keeps all. Older ones are deleted only after a newer save succeeded.

    Raises:
      CheckpointError: If the directory cannot be created or opened.
    """
    directory = os.fspath(directory)
    self._local = _is_local(directory)
    if self._local:
      directory = os.path.abspath(directory)
    self._directory = directory
    self._pending_step: int | None = None
    self._closed = False
    # Look before Orbax's start-up cleanup deletes them, so the log records
    # that a save was interrupted.
    try:
      unfinished = (
          [
              os.path.join(directory, name)
              for name in sorted(os.listdir(directory))
              if _ORBAX_TMP_MARKER in name
          ]
          if self._local and os.path.isdir(directory)
          else []
      )
    except OSError as e:
      raise CheckpointError(
          f"cannot open checkpoint directory {directory}: "
          f"{errors_lib.describe(e)}"
      ) from None
    if unfinished:
      logging.warning(
          "Found %d unfinished checkpoint save(s) (process stopped while"
          " saving); they are not restorable and will be removed: %s",
          len(unfinished),
          ", ".join(unfinished),
      )
    absl_logger = py_logging.getLogger("absl")
    if errors_lib.orbax_traceback_filter not in absl_logger.filters:
      absl_logger.addFilter(errors_lib.orbax_traceback_filter)
    logs.quiet_abandoned_saves()
    try:
      self._manager = ocp.CheckpointManager(
          directory, options=_manager_options(max_to_keep)
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot open checkpoint directory {directory}: "
          f"{errors_lib.describe(e)}"
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
    """Returns the newest complete (not necessarily intact) step, or None."""
    return self._manager.latest_step()

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
        TrainState). Store PRNG keys as `jax.random.key_data(key)`. With
        several processes every jax.Array must be a global array (e.g. the
        output of a jitted function with NamedSharding out_shardings).
      wait: If True, return only once the checkpoint is complete, fsynced and
        checksummed.

    Returns:
      True if a checkpoint was written (or started), False if `step` already
      had a complete checkpoint (e.g. saving again right after resuming).

    Raises:
      CheckpointError: If this save (or a previous background save) failed
        (one line; Orbax's tracebacks go to the DEBUG log). Older checkpoints
        are left intact.
    """
    self._check_open()
    self.wait_until_finished()
    path = self.step_path(step)
    if step in self._manager.all_steps():
      logging.info("Checkpoint %s already exists; not saving again.", path)
      return False
    try:
      saved = self._manager.save(
          step, args=ocp.args.StandardSave(state), force=True
      )
    except Exception as e:  # pylint: disable=broad-except
      self._after_failed_save()
      raise CheckpointError(
          f"failed to save checkpoint step {step} to {path}: {_save_error(e)}"
      ) from e
    if not saved:
      # force=True should make this unreachable; never report success falsely.
      self._after_failed_save()
      raise CheckpointError(f"Orbax declined to save step {step} to {path}")
    self._pending_step = step
    if wait:
      self.wait_until_finished()
    return True

  def poll(self) -> None:
    """Seals a background save as soon as Orbax has committed it.

    Cheap when nothing is pending; call it often (every step) so that a
    kill finds few committed steps without their checksums.

    Raises:
      CheckpointError: If the background save failed (one line, as `save`).
    """
    # Sealing ends in a barrier, and processes see the commit at different
    # moments: with several, the next `save` seals.
    if (
        self._pending_step is not None
        and jax.process_count() == 1
        and not self._manager.is_saving_in_progress()
    ):
      self.wait_until_finished()

  def wait_until_finished(self) -> None:
    """Blocks until a background save is complete, fsynced and checksummed.

    Raises:
      CheckpointError: If the background save failed (one line, as `save`).
    """
    if self._pending_step is None:
      return
    step, self._pending_step = self._pending_step, None
    path = self.step_path(step)
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._after_failed_save()
      raise CheckpointError(
          f"failed to save checkpoint step {step} to {path}: {_save_error(e)}"
      ) from e
    if self._local:
      if not os.path.isdir(path):
        self._after_failed_save()
        raise CheckpointError(
            f"checkpoint step {step} was not written: {path} does not exist"
        )
      if jax.process_index() == 0:
        try:
          self._seal(step, path)
        except OSError as e:
          raise CheckpointError(
              f"checkpoint step {step} at {path} was written but could not be"
              f" fsynced/checksummed: {errors_lib.describe(e)}"
          ) from e
    _sync_processes(f"resflax_checkpoint_sealed_{step}")

  def _seal(self, step: int, path: str) -> None:
    """Fsyncs the step's files and records their checksums."""
    checksums.seal(path, step, record=self._local)
    fileio.fsync_dir(self._directory)

  def _after_failed_save(self) -> None:
    # Orbax drops steps it planned to garbage-collect from its in-memory list
    # before writing; re-read the directory so that list matches the disk.
    try:
      self._manager.reload()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning(
          "Reloading checkpoint list of %s failed: %s",
          self._directory,
          errors_lib.describe(e),
      )

  # -- restoring --------------------------------------------------------------

  def restore(
      self, target: PyTree, step: int | None = None
  ) -> tuple[int, PyTree]:
    """Restores checkpoint `step` (default: the latest complete one).

    Args:
      target: Pytree giving the structure, dtypes and shardings to restore
        into: concrete arrays (their `.sharding`, e.g. a NamedSharding, is
        used) or `jax.ShapeDtypeStruct`s (with or without sharding; without
        one, a single-process job gets arrays on its first device) or numpy
        arrays (restored as numpy). Or a function of the step giving that
        pytree (checkpoints of one directory may hold different formats),
        called once the step's files are verified.
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
        raise CheckpointError(f"no complete checkpoint in {self._directory}")
    try:
      return step, self._restore_step(step, target)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot restore checkpoint {self.step_path(step)}: "
          f"{errors_lib.describe(e)}"
      ) from e

  def _restore_step(self, step: int, target: PyTree) -> PyTree:
    path = self.step_path(step)
    if self._local:
      checksums.verify(path)
    if callable(target):  # built once the files are known to be intact
      target = target(step)
    abstract = jax.tree.map(_restore_target, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def stored_tree(self, step: int) -> PyTree:
    """The tree checkpoint `step` holds: Orbax's metadata of each array.

    Reads no array. Leaves have `.shape` and `.dtype`; pytree nodes of the
    saved state (dataclasses, named tuples) come back as dicts and lists.
    """
    handler = ocp.StandardCheckpointHandler()
    return handler.metadata(epath.Path(self.step_path(step)) / _ITEM).tree

  def restore_latest_good(self, target: PyTree) -> tuple[int, PyTree] | None:
    """Restores the newest checkpoint that is not corrupt, falling back if so.

    Tries complete checkpoints from newest to oldest. One proven corrupt
    (checksum mismatch, truncated or undecodable files or metadata) is logged
    as a WARNING naming its path and the error, and the next older one is
    tried; once one restores, the newer corrupt ones are renamed to
    `<step>.resflax-corrupt` (kept for inspection, invisible to Orbax) so that
    saving those steps again and `latest_step()` are not blocked or misled.
    An unverified step (no checksum file, see module docs) newer than a
    sealed one is skipped the same way and renamed `<step>.resflax-unverified`.
    Any other error stops at once (see module docs). Unfinished saves are never
    candidates.

    Args:
      target: As for `restore` (a function of the step too).

    Returns:
      `(step, state)`, or None if the directory holds no complete checkpoint
      (a fresh run).

    Raises:
      CheckpointError: If a checkpoint fails (on any process) for a reason
        other than proven corruption, or all checkpoints are corrupt. Nothing
        is renamed then.
    """
    self._check_open()
    self.wait_until_finished()
    steps = sorted(self._manager.all_steps(), reverse=True)
    sealed = [s for s in steps if self._is_sealed(s)]
    corrupt: list[tuple[int, str]] = []
    unverified: list[int] = []
    for step in steps:
      path = self.step_path(step)
      if step not in sealed and any(s < step for s in sealed):
        logging.warning(
            "Checkpoint %s has no %s (its save was cut short "
            "before it was sealed); using an older sealed one.",
            path,
            CHECKSUM_FILE,
        )
        unverified.append(step)
        continue
      ok, result = self._restore_unless_corrupt(step, target)
      if not ok:
        logging.warning(
            "Checkpoint %s is corrupt (%s); trying an older one.", path, result
        )
        corrupt.append((step, f"{path}: {result}"))
        continue
      if corrupt or unverified:
        logging.warning(
            "Restored checkpoint %s after skipping %d newer"
            " corrupt and %d unverified one(s).",
            path,
            len(corrupt),
            len(unverified),
        )
        self._quarantine([s for s, _ in corrupt], CORRUPT_SUFFIX)
        self._quarantine(unverified, UNVERIFIED_SUFFIX)
      if step not in sealed:
        logging.warning(
            "Restored checkpoint %s without %s (written by an"
            " older resflax or another tool): only Orbax checked"
            " it, its values are unverified.",
            path,
            CHECKSUM_FILE,
        )
      return step, result
    if corrupt:
      raise CheckpointError(
          f"{len(corrupt)} checkpoint(s) in {self._directory} exist but none"
          " can be restored (refusing to start over): "
          + "; ".join(why for _, why in corrupt)
      )
    return None

  def _is_sealed(self, step: int) -> bool:
    # Remote directories carry no checksums: Orbax's checks are all there is.
    return not self._local or os.path.exists(
        os.path.join(self.step_path(step), CHECKSUM_FILE)
    )

  def _restore_unless_corrupt(
      self, step: int, target: PyTree
  ) -> tuple[bool, Any]:
    """Returns `(True, state)`, or `(False, why)` if `step` is corrupt.

    Collective: processes agree, so any that failed otherwise makes all raise
    `CheckpointError`.
    """
    error = restored = None
    try:
      restored, outcome = self._restore_step(step, target), _OK
    except Exception as e:  # pylint: disable=broad-except
      error, outcome = e, (_CORRUPT if errors_lib.is_corruption(e) else _FAILED)
    worst = _worst_outcome(outcome)
    if worst == _FAILED:
      why = (
          errors_lib.describe(error)
          if outcome == _FAILED
          else "another process could not read it (see its log)"
      )
      raise CheckpointError(
          f"cannot restore checkpoint {self.step_path(step)}: {why} (not"
          " proof of corruption: no older checkpoint tried, nothing renamed)"
      ) from error
    if worst == _CORRUPT:
      return (
          False,
          errors_lib.describe(error) if error else "corrupt on another process",
      )
    return True, restored

  def _quarantine(self, steps: Sequence[int], suffix: str) -> None:
    if not self._local or not steps:
      return
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        src = self.step_path(step)
        dst = f"{src}{suffix}"
        if os.path.exists(dst):
          dst = f"{src}{suffix}-{stamp}"
        try:
          os.rename(src, dst)
          logging.warning("Moved checkpoint %s to %s", src, dst)
        except OSError as e:
          logging.warning("Could not move corrupt checkpoint %s: %s", src, e)
      fileio.fsync_dir(self._directory)
    _sync_processes("resflax_checkpoint_quarantine")
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
      raise CheckpointError(f"Checkpointer for {self._directory} is closed")

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

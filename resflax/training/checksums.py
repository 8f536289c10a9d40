"""Checksums of a checkpoint step's files: written once Orbax commits a
step ("sealing" it), verified before it is restored.

Orbax and tensorstore catch truncated files and damaged b-tree nodes, but
not a flipped bit in array data; a size and CRC-32 per file does (see
``resflax.training.checkpoint``, which calls this module; no Orbax here).
"""

import json
import os
import zlib

from resflax import fileio
from resflax.errors import CheckpointError
from resflax.training import checkpoint_errors as errors_lib

CHECKSUM_FILE = "resflax_checksums.json"
VERSION = 1
# Orbax may rewrite the step-level metadata after commit (timestamps).
_MUTABLE_FILES = frozenset({"_CHECKPOINT_METADATA"})
_READ_CHUNK = 1 << 22


def _file_crc32(path: str, *, fsync: bool) -> tuple[int, int]:
  crc = 0
  size = 0
  with open(path, "rb") as f:
    while chunk := f.read(_READ_CHUNK):
      crc = zlib.crc32(chunk, crc)
      size += len(chunk)
    if fsync:
      os.fsync(f.fileno())
  return size, crc


def scan(step_dir: str, *, fsync: bool) -> dict[str, list[int]]:
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
      if name.startswith(("." + CHECKSUM_FILE, CHECKSUM_FILE)) or (
          rel in _MUTABLE_FILES
      ):
        continue
      files[rel] = list(crc)
    if fsync:
      fileio.fsync_dir(root)
  return files


def verify(step_dir: str) -> bool:
  """Checks `step_dir` (a complete step) against its checksum file.

  Returns:
    True if every listed file matches, False if there is no checksum file.

  Raises:
    checkpoint_errors.Corrupt: If a listed file is missing or has another
      size or CRC, or the checksum file is not valid JSON (`write_atomic`
      never exposes a partial one, so that is damage too).
    CheckpointError: If the checksum file has an unknown format.
    OSError: If a file cannot be read (permissions, I/O errors), which proves
      nothing about its contents.
  """
  manifest_path = os.path.join(step_dir, CHECKSUM_FILE)
  try:
    with open(manifest_path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    return False
  try:
    manifest = json.loads(raw)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise errors_lib.Corrupt(
        f"damaged checksum file {manifest_path}: {e}"
    ) from e
  files = manifest.get("files") if isinstance(manifest, dict) else None
  if not (isinstance(files, dict) and manifest.get("version") == VERSION):
    raise CheckpointError(f"unknown format of checksum file {manifest_path}")
  for rel, (size, crc) in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    try:
      actual_size, actual_crc = _file_crc32(full, fsync=False)
    except FileNotFoundError as e:
      raise errors_lib.Corrupt(f"missing file {full}") from e
    if actual_size != size:
      raise errors_lib.Corrupt(
          f"file {full} has {actual_size} bytes, expected {size} (truncated?)"
      )
    if actual_crc != crc:
      raise errors_lib.Corrupt(
          f"file {full} fails its CRC-32 check (expected"
          f" {crc:#010x}, got {actual_crc:#010x})"
      )
  return True


def seal(step_dir: str, step: int, *, record: bool = True) -> None:
  """Fsyncs every file of ``step_dir``; records their checksums if ``record``.

  Args:
    step_dir: a step Orbax has committed.
    step: its step, recorded in the checksum file.
    record: False on a filesystem without plain ``os`` access (object
      stores), where only the fsync of what is mounted happens.
  """
  files = scan(step_dir, fsync=True)
  if record:
    manifest = {"version": VERSION, "step": step, "files": files}
    fileio.write_atomic(
        os.path.join(step_dir, CHECKSUM_FILE),
        json.dumps(manifest, sort_keys=True, indent=1),
    )

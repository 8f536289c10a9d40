"""Crash-safe writers for result files (JSON, CSV, plain text).

Every writer goes through `write_atomic`, so a reader (or a resumed run) sees
either the previous complete file or the new complete file, never a prefix of
one: result files are what reproduction claims are checked against, and a run
killed mid-write must not leave a half-written table behind.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

PathLike = str | os.PathLike


def fsync_dir(directory: str) -> None:
  """Flushes a directory's entries (after a rename into it) to disk."""
  # The rename is only durable once the directory entry itself is on disk.
  # Some platforms/filesystems refuse to open or fsync a directory; the data
  # file is already synced, so losing this last step is not worth an error.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_atomic(path: PathLike, data: str | bytes) -> None:
  """Atomically replaces the file at `path` with `data`.

  Writes to a temporary file in the same directory, fsyncs it and renames it
  over `path` with `os.replace` (atomic on POSIX and Windows when source and
  destination are on the same filesystem, which the same directory ensures).
  Missing parent directories are created.

  Args:
    path: Destination file.
    data: Text (encoded as UTF-8) or bytes.

  Raises:
    OSError: If the file cannot be written; the previous file, if any, is left
      untouched and the temporary file is removed.
  """
  path = os.fspath(path)
  if isinstance(data, str):
    data = data.encode("utf-8")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
  )
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp creates 0600 files; result files should get the usual
    # umask-derived permissions like any other file the user creates.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp_path)
    raise
  fsync_dir(directory)


def _to_builtin_scalar(x: Any) -> Any:
  """Converts numpy/jax scalars and arrays to Python builtins (recursively)."""
  arr = np.asarray(x)
  if arr.dtype.kind not in "biufcUS":
    # ml_dtypes such as bfloat16 have kind 'V'; go through float64 so that
    # tolist() yields Python floats instead of opaque scalar objects.
    arr = arr.astype(np.float64)
  if arr.dtype.kind == "c":
    return _to_jsonable(np.stack([arr.real, arr.imag], axis=-1).tolist())
  return arr.tolist()


def _to_jsonable(obj: Any) -> Any:
  """Returns a JSON-serialisable copy of `obj`."""
  if obj is None or isinstance(obj, (bool, str)):
    return obj
  if isinstance(obj, (int, float)) and type(obj) in (int, float):
    return obj
  if isinstance(obj, (np.generic, np.ndarray)):
    return _to_builtin_scalar(obj)
  if isinstance(obj, Mapping):
    # JSON keys must be strings; str() keeps numpy/int keys readable and lets
    # sort_keys work on mixed key types.
    return {str(_to_jsonable(k)): _to_jsonable(v) for k, v in obj.items()}
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return _to_jsonable(dataclasses.asdict(obj))
  if isinstance(obj, (pathlib.PurePath,)):
    return str(obj)
  if isinstance(obj, (list, tuple, set, frozenset)):
    items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
    return [_to_jsonable(v) for v in items]
  if isinstance(obj, (int, float)):
    # Subclasses such as IntEnum or np.float64 (a float subclass).
    return float(obj) if isinstance(obj, float) else int(obj)
  if hasattr(obj, "__array__"):
    # jax.Array and other array-likes, without importing jax here.
    return _to_builtin_scalar(np.asarray(obj))
  if hasattr(obj, "item") and callable(obj.item):
    return _to_jsonable(obj.item())
  raise TypeError(
      f"Object of type {type(obj).__name__} is not JSON serializable"
  )


def to_json_string(obj: Any, *, indent: int | None = 2) -> str:
  """Serialises `obj` like `write_json` does, returning the string.

  Args:
    obj: Nested dicts/lists of builtins, numpy or jax scalars and arrays,
      dataclasses and paths.
    indent: Passed to `json.dumps`.

  Returns:
    JSON text with sorted keys and a trailing newline. NaN and infinities are
    written as the (non-standard) JSON tokens `NaN`/`Infinity`, which Python's
    `json` reads back; a diverged run's loss is information worth keeping.
  """
  return json.dumps(_to_jsonable(obj), sort_keys=True, indent=indent) + "\n"


def write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
  """Atomically writes `obj` as JSON with sorted keys.

  Args:
    path: Destination file.
    obj: Nested dicts/lists of builtins, numpy or jax scalars and arrays,
      dataclasses and paths. Arrays become (nested) lists.
    indent: Passed to `json.dumps`.

  Raises:
    TypeError: If `obj` contains something that cannot be converted.
    OSError: If the file cannot be written (the old file stays intact).
  """
  write_atomic(path, to_json_string(obj, indent=indent))


def read_json(path: PathLike) -> Any:
  """Reads a JSON file written by `write_json` (or any JSON file).

  Args:
    path: File to read.

  Returns:
    The decoded object.
  """
  with open(os.fspath(path), encoding="utf-8") as f:
    return json.load(f)


def _csv_cell(v: Any) -> Any:
  if v is None:
    return ""
  if isinstance(v, float) and math.isnan(v):
    return "nan"
  if isinstance(v, (str, int, float)) and not isinstance(v, np.generic):
    return v
  converted = _to_jsonable(v)
  if isinstance(converted, (list, dict)):
    return json.dumps(converted, sort_keys=True)
  return converted


def write_csv(
    path: PathLike,
    rows: Sequence[Mapping[str, Any]],
    *,
    fieldnames: Iterable[str] | None = None,
) -> None:
  """Atomically writes a list of dicts as CSV with a header row.

  Args:
    path: Destination file.
    rows: One mapping per row. Rows may have different keys; missing cells
      are written empty.
    fieldnames: Column order. Defaults to the keys in order of first
      appearance across `rows`. Keys not listed here raise `ValueError`.

  Raises:
    ValueError: If a row has a key that is not in `fieldnames`.
    OSError: If the file cannot be written (the old file stays intact).
  """
  if fieldnames is None:
    seen: dict[str, None] = {}
    for row in rows:
      for key in row:
        seen.setdefault(key, None)
    fieldnames = list(seen)
  else:
    fieldnames = list(fieldnames)
  buf = io.StringIO()
  if fieldnames:
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _csv_cell(v) for k, v in row.items()})
  write_atomic(path, buf.getvalue())


def read_csv(path: PathLike) -> list[dict[str, str]]:
  """Reads a CSV file with a header row into a list of dicts of strings.

  Args:
    path: File to read.

  Returns:
    One dict per data row.
  """
  with open(os.fspath(path), encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))

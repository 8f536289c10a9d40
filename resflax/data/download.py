"""Downloading a file of known size and sha256 into the download cache.

:func:`fetch` gets an :class:`Archive` (URL, byte size, sha256) into
``download_dir`` (``config.data.download_dir``, else
``$RESFLAX_CACHE/downloads``, default ``~/.cache/resflax/downloads``) under
the last part of its URL's path. A file already there with the right size
and sha256 is used without any network. Otherwise the bytes go to
``<name>.part``, which a later call resumes with an HTTP ``Range`` request;
only a ``.part`` whose sha256 matches is renamed (atomically) to the final
name, so a file under the final name is always complete.

Failing networks fail fast: every socket operation times out after
``TIMEOUT_S`` and getting the first answer after ``OPEN_DEADLINE_S``, and
nothing is retried. The error is one line naming the URL, the reason, the
path where a copy of the file may be put instead, and any other way out.
Only the standard library is used (no requests, no TensorFlow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from absl import logging

from resflax.data import cache as cache_lib
from resflax.data.base import config_value
from resflax.errors import DataError

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # Windows: no concurrent downloads are guarded there.
  fcntl = None

# Seconds any one socket operation (connect, a read) may wait.
TIMEOUT_S = 5.0
# Seconds from the request to the response's headers, name lookup included:
# the socket timeout does not bound DNS, nor a connect tried per address.
OPEN_DEADLINE_S = 8.0
# Seconds between progress lines.
PROGRESS_EVERY_S = 5.0
_CHUNK = 1 << 20
_MIB = float(1 << 20)

DEFAULT_OTHERWISE = (
    "set config.data.path to an image-folder tree or a " ".tar.gz of one"
)


@dataclasses.dataclass(frozen=True)
class Archive:
  """A file to download and what it must be.

  Attributes:
    url: Where it is downloaded from (http or https).
    size: Its size in bytes.
    sha256: Its sha256, lowercase hex.
  """

  url: str
  size: int
  sha256: str

  @property
  def filename(self) -> str:
    """The name it is cached under: the last part of the URL's path."""
    return Path(urllib.parse.urlsplit(self.url).path).name or "download"


def download_dir(config_data: Any) -> Path:
  """`config.data.download_dir`, else `$RESFLAX_CACHE/downloads`.

  Args:
    config_data: `config.data` (ConfigDict, mapping or attribute object).

  Returns:
    The folder (it may not exist yet); without `$RESFLAX_CACHE`,
    `~/.cache/resflax/downloads`.
  """
  configured = str(config_value(config_data, "download_dir", "")).strip()
  if configured:
    return Path(configured).expanduser()
  # The root only: config.data.cache_dir moves decoded arrays, not downloads.
  return cache_lib.cache_dir({}) / "downloads"


def cache_path(archive: Archive, directory: Path) -> Path:
  """Where `archive` is kept in `directory`."""
  return Path(directory) / archive.filename


def sha256_of(path: Path) -> str:
  """The sha256 (hex) of the file at `path`."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(_CHUNK):
      digest.update(block)
  return digest.hexdigest()


def fetch(
    archive: Archive, directory: Path, *, otherwise: str = DEFAULT_OTHERWISE
) -> Path:
  """The path of `archive` in `directory`, downloading it if needed.

  Args:
    archive: What to get.
    directory: The download folder (see `download_dir`); created if needed.
    otherwise: The way out besides putting the file in place, named in
      errors (e.g. 'set config.data.path to ...').

  Returns:
    `cache_path(archive, directory)`, holding the verified file.

  Raises:
    DataError: one line, if the file there is not the archive, or it cannot
      be downloaded or does not verify; a partial download stays in
      `<name>.part` for the next call to resume, except after a checksum
      mismatch, which deletes it.
    resflax.errors.Stopped: on SIGTERM inside `StopSignal.interrupting()`;
      the `.part` is kept.
  """
  path = cache_path(archive, directory)
  if path.is_file():
    _check_in_place(archive, path)
    return path
  fail = _failure(archive, path, otherwise)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise fail(f"cannot create {path.parent}: {e.strerror or e}") from None
  part = path.with_name(path.name + ".part")
  with _locked(part) as f:
    if path.is_file():  # Another process downloaded it while we waited.
      if os.fstat(f.fileno()).st_size == 0:
        part.unlink(missing_ok=True)  # The empty one opening it created.
      _check_in_place(archive, path)
      return path
    try:
      _download(archive, f, path, part, fail)
    except DataError:
      with contextlib.suppress(OSError):
        f.flush()
        if os.fstat(f.fileno()).st_size == 0:
          part.unlink()  # Nothing to resume: leave no litter.
      raise
    try:
      f.flush()  # Hashed and renamed while still locked.
    except OSError as e:
      raise _unwritable(part, e) from None
    size = os.fstat(f.fileno()).st_size
    digest = sha256_of(part) if size == archive.size else None
    if digest != archive.sha256:
      part.unlink(missing_ok=True)
      got = (
          f"sha256 {digest}"
          if digest
          else f"{size} bytes (sha256 not computed)"
      )
      raise DataError(
          f"checksum mismatch for {archive.url}: expected sha256 "
          f"{archive.sha256} ({archive.size} bytes), got {got}; deleted "
          f"{part}. Run again to download it afresh, or put the file at "
          f"{path}, or {otherwise}."
      )
    try:
      os.replace(part, path)
    except OSError as e:
      raise _unwritable(path, e) from None
  logging.info("downloaded %s to %s", archive.url, path)
  return path


def _check_in_place(archive: Archive, path: Path) -> None:
  """Raises DataError unless the file at `path` is `archive`."""
  size = path.stat().st_size
  digest = sha256_of(path) if size == archive.size else None
  if digest == archive.sha256:
    return
  got, want = (
      (f"sha256 {digest}", f"sha256 {archive.sha256}")
      if digest
      else (f"{size} bytes", f"{archive.size} bytes")
  )
  raise DataError(
      f"{path} is not the file of {archive.url}: it has {got}, expected "
      f"{want}; delete it to download it again, or replace it with the "
      "right file."
  )


def _failure(
    archive: Archive, path: Path, otherwise: str
) -> Callable[[str], DataError]:
  """reason -> the one-line DataError of a failed download of `archive`."""

  def fail(reason: str) -> DataError:
    reason = " ".join(str(reason).split())
    return DataError(
        f"could not download {archive.url} ({reason}). Put "
        f"{archive.filename} ({archive.size} bytes, sha256 "
        f"{archive.sha256}) at {path} (or in the folder that "
        f"config.data.download_dir names), or {otherwise}."
    )

  return fail


def _unwritable(path: Path, e: OSError) -> DataError:
  """The one-line DataError of a download that cannot be written."""
  return DataError(
      f"cannot write {path}: {e.strerror or e}; free space there or set "
      "config.data.download_dir to a writable folder with room for it."
  )


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[BinaryIO]:
  """`part` opened for appending, locked against other processes.

  Several processes of one run (multi-host on a shared home) would
  otherwise interleave their bytes in one `.part`. The lock is released
  when the file is closed.
  """
  while True:
    try:
      f = open(part, "ab")
    except OSError as e:
      raise _unwritable(part, e) from None
    try:
      if fcntl is not None:
        try:
          fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          logging.info("waiting for another process downloading to %s", part)
          fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
          pass  # A file system without locks (some NFS): go unguarded.
      try:
        current = os.stat(part).st_ino == os.fstat(f.fileno()).st_ino
      except FileNotFoundError:
        current = False
    except BaseException:
      f.close()
      raise
    if current:
      break
    f.close()  # Renamed or deleted by the process that held the lock.
  try:
    yield f
  finally:
    f.close()


def _download(
    archive: Archive,
    f: BinaryIO,
    path: Path,
    part: Path,
    fail: Callable[[str], DataError],
) -> None:
  """Appends the rest of `archive` to `f`, the open `part`."""
  start = os.fstat(f.fileno()).st_size
  if start > archive.size:  # Not a prefix of this file: start over.
    f.truncate(0)
    start = 0
  if start == archive.size:
    return  # A complete .part whose check was interrupted: verify it.
  try:
    response = _open(archive.url, start)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, urllib.error.HTTPError) and e.code == 416:
      f.truncate(0)  # The server knows no such range: start over next time.
    raise fail(_reason(e)) from None
  with response:
    if start and response.status != 206:
      # The server ignored the Range header and sends the whole file.
      logging.info(
          "%s: the server does not resume downloads; starting "
          "again from byte 0",
          archive.url,
      )
      f.truncate(0)
      start = 0
    elif start:
      answered = response.headers.get("Content-Range", "")
      if not answered.startswith(f"bytes {start}-"):
        raise fail(f"asked for bytes {start}- and got range {answered!r}")
    logging.info(
        "downloading %s (%.1f MiB) to %s%s",
        archive.url,
        archive.size / _MIB,
        path,
        f", resuming at byte {start}" if start else "",
    )
    _copy(response, f, start, archive, part, fail)


def _copy(
    response: Any,
    f: BinaryIO,
    done: int,
    archive: Archive,
    part: Path,
    fail: Callable[[str], DataError],
) -> None:
  """Writes `response`'s body to `f`, logging progress now and then."""
  last_log = time.monotonic()
  # read1: what has arrived, so a stop keeps it; read(n) waits for n bytes.
  read = getattr(response, "read1", response.read)
  while done <= archive.size:  # More than the size is wrong; stop reading.
    try:
      block = read(min(_CHUNK, archive.size + 1 - done))
    except (OSError, http.client.HTTPException) as e:
      raise fail(
          f"{_reason(e)} after {done} of {archive.size} bytes; "
          f"{part} is kept and the next run resumes it"
      ) from None
    if not block:
      break
    try:
      f.write(block)
    except OSError as e:  # A full disk, say.
      raise _unwritable(part, e) from None
    done += len(block)
    if time.monotonic() - last_log >= PROGRESS_EVERY_S:
      last_log = time.monotonic()
      logging.info(
          "downloaded %.1f of %.1f MiB (%d%%) of %s",
          done / _MIB,
          archive.size / _MIB,
          100 * done // archive.size,
          archive.url,
      )
  if done < archive.size:
    raise fail(
        f"the connection closed after {done} of {archive.size} "
        f"bytes; {part} is kept and the next run resumes it"
    )


class _NoAnswer(TimeoutError):
  """The response's headers did not come within OPEN_DEADLINE_S."""


def _open(url: str, start: int) -> Any:
  """The response to GET `url` from byte `start`, within OPEN_DEADLINE_S.

  Opened in a daemon thread because neither the name lookup nor the sum of
  connect timeouts over several addresses is bounded by the socket timeout;
  the waiting main thread still takes signals (SIGTERM raises there).

  Raises:
    What urlopen raises, or _NoAnswer.
  """
  headers = {"User-Agent": "resflax"}
  if start:
    headers["Range"] = f"bytes={start}-"
  request = urllib.request.Request(url, headers=headers)
  box, lock = {}, threading.Lock()

  def opener() -> None:
    try:
      result = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except BaseException as e:  # pylint: disable=broad-except
      result = e
    with lock:
      if not box.get("abandoned"):
        box["result"] = result
      elif not isinstance(result, BaseException):
        result.close()  # Nobody waits for it any more.

  thread = threading.Thread(target=opener, name="resflax-download", daemon=True)
  thread.start()
  try:
    thread.join(OPEN_DEADLINE_S)
  finally:
    with lock:
      result = box.pop("result", None)
      box["abandoned"] = True
  if result is None:
    raise _NoAnswer(f"no answer within {OPEN_DEADLINE_S:g} s")
  if isinstance(result, BaseException):
    raise result
  return result


def _reason(e: BaseException) -> str:
  """A short phrase saying why a request failed."""
  if isinstance(e, urllib.error.HTTPError):
    return f"HTTP {e.code} {e.reason}"
  if isinstance(e, urllib.error.URLError):
    if not isinstance(e.reason, BaseException):
      return str(e.reason)
    e = e.reason
  if isinstance(e, _NoAnswer):
    return str(e)
  if isinstance(e, TimeoutError):  # socket.timeout too.
    return f"no answer within {TIMEOUT_S:g} s"
  if isinstance(e, socket.gaierror):
    return f"cannot resolve the host name: {e.strerror}"
  text = getattr(e, "strerror", None) or str(e)
  return f"{type(e).__name__}: {text}" if text else type(e).__name__

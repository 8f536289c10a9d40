"""The decoded-array cache of image folders and archives.

Decoded arrays are kept as an uncompressed ``.npz`` under ``cache_dir``
(``config.data.cache_dir``, else ``$RESFLAX_CACHE``, else
``~/.cache/resflax``), so only the first load of a folder or archive pays
for decoding. The file name carries a key of the source's identity; any
change to the source gives a new key, so a stale entry is never read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from resflax.data.base import Raw, config_value

_log = logging.getLogger(__name__)

# Bump when the cached array layout changes, so stale caches are ignored.
CACHE_VERSION = 1


def slug(text: str) -> str:
  """`text` made safe for a file name ('data' if nothing is left)."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "data"


def cache_dir(config_data: Any) -> Path:
  """The configured cache folder (it may not exist yet)."""
  configured = str(config_value(config_data, "cache_dir", "")).strip()
  root = configured or os.environ.get("RESFLAX_CACHE") or "~/.cache/resflax"
  return Path(root).expanduser()


def folder_cache_path(
    directory: Path, root: Path, listing: Iterable[tuple[str, int, int]]
) -> Path:
  """Cache file of the folder `root` whose files are `listing`.

  Args:
    directory: The cache folder.
    root: The image-folder root (absolute).
    listing: (relative path, size, mtime_ns) of every image, in load order.

  Returns:
    The path; its key covers the root and every file's size and mtime, so
    editing, adding or removing an image invalidates the entry.
  """
  digest = hashlib.sha256(
      f"v{CACHE_VERSION}\0{root}\0".encode("utf-8", "surrogateescape")
  )
  for rel, size, mtime in listing:
    digest.update(
        f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape")
    )
  return directory / f"folder-{slug(root.name)}-{digest.hexdigest()[:20]}.npz"


def archive_cache_path(directory: Path, archive: Path, stem: str) -> Path:
  """Cache file of `archive`, keyed by its path, size and mtime.

  Keyed by the archive's identity, so a cached load does not read it at all.
  """
  stat = archive.stat()
  key = hashlib.sha256(
      f"v{CACHE_VERSION}\0{archive}\0{stat.st_size}\0{stat.st_mtime_ns}".encode(
          "utf-8", "surrogateescape"
      )
  ).hexdigest()[:20]
  return directory / f"archive-{slug(stem)}-{key}.npz"


def read_cache(path: Path) -> Raw | None:
  """Cached arrays at `path`, or None if absent or unreadable."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
    class_names = tuple(str(c) for c in arrays["class_names"])
    return Raw(
        str(arrays["name"]),
        len(class_names),
        class_names,
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        cache_path=str(path),
        cache_hit=True,
    )
  except Exception as e:  # A truncated or foreign file: rebuild it.
    _log.warning("ignoring unreadable cache file %s: %s", path, e)
    return None


def write_cache(path: Path, raw: Raw) -> bool:
  """Atomically writes `raw` to `path`; False (and a warning) on failure."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
      with os.fdopen(fd, "wb") as f:
        # Uncompressed: loading must be a memcpy, not a decompression.
        np.savez(
            f,
            name=np.asarray(raw.name),
            class_names=np.asarray(raw.class_names),
            train_images=raw.train_images,
            train_labels=raw.train_labels,
            test_images=raw.test_images,
            test_labels=raw.test_labels,
        )
      os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache.
      # Atomic: concurrent readers see the old file or the complete new one.
      os.replace(tmp, path)
    except BaseException:
      Path(tmp).unlink(missing_ok=True)
      raise
  except OSError as e:
    # The cache is an optimisation; a read-only home must not stop a run.
    _log.warning("could not write dataset cache %s: %s", path, e)
    return False
  return True

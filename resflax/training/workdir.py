"""A run's directory: who holds it, which config it runs, what it recorded.

Files (in the workdir of a single run, or in each ``seed<s>/`` of parallel
runs for the per-run ones):

  config.json          the config in force; replaced by a changed config
                       (``train.allow_config_change``) only once that config
                       has produced a checkpoint
  config_history.jsonl one line per config change: the step it took over at
  metrics.jsonl        append-only log of every report, evaluation and
                       checkpoint (step, scalars, cumulative train time);
                       results.json's history and throughput are rebuilt
                       from it, so they cover every segment of a resumed run
  results.json         the final results, written once the run finished
  .lock                held (flock) by the process training in the workdir

The lock is an advisory ``fcntl.flock``: the kernel releases it when the
holder exits or is killed, so a crashed run never leaves it stuck.
"""

import fcntl
import json
import os
import platform
import socket
from typing import Any, Dict, List, Optional

from absl import logging
from flax import traverse_util
import jax
import ml_collections

from resflax import fileio
from resflax.config import base_config
from resflax.errors import ConfigError, WorkdirError

CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
LOG_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
LOCK_FILE = ".lock"

# Keys that change how often or how things happen, not what is computed
# (the model keys keep parameters and results): a resumed run may change
# them freely, e.g. unroll on a GPU a run begun scanned on a CPU.
VOLATILE_KEYS = ("train.log_every", "train.eval_every",
                 "train.checkpoint_every", "train.max_checkpoints",
                 "train.allow_config_change", "data.path",
                 "data.tfds_data_dir", "data.download_dir", "model.scan",
                 "model.scan_unroll",
                 "model.remat", "model.cpu_conv_grad",
                 "train.compilation_cache")


def make_dir(path: str) -> None:
  """Creates ``path`` (and parents) or raises one line naming it."""
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError:
    raise WorkdirError(f"workdir {path} exists and is not a directory; "
                       "choose another --workdir") from None
  except OSError as e:
    raise WorkdirError(f"cannot create workdir {path}: {e.strerror}; "
                       "choose a writable --workdir") from None


class WorkdirLock:
  """Holds ``workdir/.lock`` for one run; a second run is refused.

  Raises (on enter):
    WorkdirError: the workdir is held by another live process (named by
      pid and host), or cannot be written.
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def __enter__(self) -> "WorkdirLock":
    try:
      fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot write in workdir {os.path.dirname(self._path)}"
                         f": {e.strerror}; choose a writable --workdir") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise WorkdirError(
          f"workdir {os.path.dirname(self._path)} is in use by another run "
          f"({holder}); wait for it to finish or choose another --workdir"
      ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _flat(tree: Dict[str, Any]) -> Dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep=".")


def _config_dict(config) -> Dict[str, Any]:
  return _flat(json.loads(config.to_json()))


def config_changes(config: ml_collections.ConfigDict,
                   workdir: str) -> Optional[List[str]]:
  """Keys whose values differ from the workdir's config.json.

  Returns None for a new workdir. Keys missing from the saved config (added
  to resflax after it was written) count only if they differ from their
  defaults; keys in ``VOLATILE_KEYS`` never count.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  saved = _flat(fileio.read_json(path))
  now = _config_dict(config)
  defaults = _config_dict(base_config())
  return sorted(
      k for k in set(saved) | set(now)
      if k not in VOLATILE_KEYS
      and saved.get(k, defaults.get(k)) != now.get(k, defaults.get(k)))


def check_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Refuses a workdir that holds a run of a different config.

  Returns:
    True when the workdir's config differs and the change is allowed.

  Raises:
    ConfigError: listing the differing keys, unless
      ``config.train.allow_config_change`` is set.
  """
  diff = config_changes(config, workdir)
  if not diff:
    return False
  if not config.train.allow_config_change:
    saved = _flat(fileio.read_json(os.path.join(workdir, CONFIG_FILE)))
    now = _config_dict(config)
    lines = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
                      for k in diff[:10])
    raise ConfigError(
        f"workdir {workdir} holds a run with a different config ({lines}). "
        "Use another --workdir, or set --config.train.allow_config_change="
        "True to continue it anyway.")
  logging.warning("continuing %s with config changes %s; config.json is "
                  "replaced once the new config has saved a checkpoint",
                  workdir, diff)
  return True


def write_config(config: ml_collections.ConfigDict, workdir: str,
                 step: int) -> None:
  """Makes ``config`` the workdir's config from ``step`` on (history kept)."""
  text = config.to_json(indent=2, sort_keys=True)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
  append_line(os.path.join(workdir, CONFIG_HISTORY_FILE),
              {"from_step": step, "config": json.loads(config.to_json())})
  fileio.write_atomic(path, text)


def append_line(path: str, record: Dict[str, Any]) -> None:
  """Appends one JSON line to ``path`` and flushes it to disk."""
  with open(path, "a") as f:
    f.write(fileio.to_json_string(record, indent=None).rstrip("\n") + "\n")
    f.flush()
    os.fsync(f.fileno())


class RunLog:
  """The append-only ``metrics.jsonl`` of one run.

  Each line is ``{"step": s, "kind": "train"|"eval"|"checkpoint", ...}``.
  Checkpoint lines carry the cumulative ``train_seconds`` and ``timed_steps``
  at that step, so a resumed run's throughput spans all its segments.
  """

  def __init__(self, run_dir: str, enabled: bool = True):
    self.path = os.path.join(run_dir, LOG_FILE)
    self._enabled = enabled

  def records(self) -> List[Dict[str, Any]]:
    if not os.path.exists(self.path):
      return []
    out = []
    with open(self.path) as f:
      for line in f:
        if not line.strip():
          continue
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          break  # a line cut by a kill: everything after it is unknown
    return out

  def rewind(self, step: int) -> Dict[str, float]:
    """Drops what came after checkpoint ``step`` (it will be redone).

    Returns:
      The cumulative timing at that checkpoint: ``train_seconds`` and
      ``timed_steps`` (zeros for a new run or an older workdir).
    """
    kept = [r for r in self.records() if r["step"] <= step]
    if self._enabled and os.path.exists(self.path):
      fileio.write_atomic(self.path, "".join(
          fileio.to_json_string(r, indent=None).rstrip("\n") + "\n"
          for r in kept))
    marks = [r for r in kept if r["kind"] == "checkpoint" and r["step"] == step]
    if not marks:
      return {"train_seconds": 0.0, "timed_steps": 0}
    return {"train_seconds": marks[-1]["train_seconds"],
            "timed_steps": marks[-1]["timed_steps"]}

  def append(self, step: int, kind: str, **values) -> None:
    if self._enabled:
      append_line(self.path, {"step": int(step), "kind": kind, **values})

  def history(self) -> List[Dict[str, Any]]:
    """The evaluations, in step order (one per step)."""
    evals = {r["step"]: r for r in self.records() if r["kind"] == "eval"}
    return [{k: v for k, v in evals[s].items() if k != "kind"}
            for s in sorted(evals)]

  def last(self, kind: str, key: str):
    values = [r[key] for r in self.records() if r["kind"] == kind and key in r]
    return values[-1] if values else None


def versions() -> Dict[str, str]:
  """The versions a result was produced with."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": getattr(jax.lib, "__version__", ""),
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax-checkpoint": orbax.checkpoint.__version__}


def write_failure(run_dir: str, message: str, seed: int,
                  step: Optional[int]) -> None:
  """Records a diverged run in ``run_dir/failed.json`` (a sweep skips it)."""
  fileio.write_json(os.path.join(run_dir, FAILED_FILE),
                    {"error": message, "type": "TrainingError", "seed": seed,
                     "step": step})


def finished_results(run_dir: str, steps: int) -> Optional[Dict[str, Any]]:
  """The results of a run in ``run_dir`` that finished ``steps`` steps."""
  path = os.path.join(run_dir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  try:
    result = fileio.read_json(path)
  except (OSError, ValueError):
    return None
  return result if result.get("steps") == steps else None

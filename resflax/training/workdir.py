"""A run's directory: who holds it, which config it runs, what it recorded.

Files (in the workdir of a single run, or in each ``seed<s>/`` of parallel
runs for the per-run ones):

  config.json          the config in force; replaced by a changed config
                       (``train.allow_config_change``) only once that config
                       has produced a checkpoint
  config_history.jsonl one line per config change: the step it took over at
  format.jsonl         one line per train-state format version the run's
                       checkpoints are written in, from the step on which
                       it applies (``record_format``); absent in workdirs
                       of resflax 0.1 and of main until 2026-12-05
  metrics.jsonl        append-only log of every report, evaluation and
                       checkpoint (step, scalars, cumulative train time);
                       results.json's history and throughput are rebuilt
                       from it, so they cover every segment of a resumed run
  results.json         the final results, written once the run finished
  .lock                held (flock) by the process training in the workdir

The lock is an advisory ``fcntl.flock``: the kernel releases it when the
holder exits or is killed, so a crashed run never leaves it stuck.
"""

import contextlib
import fcntl
import json
import os
import platform
import socket
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import traverse_util

from resflax import fileio, models
from resflax.config import base_config
from resflax.errors import CheckpointError, ConfigError, WorkdirError
from resflax.training import formats

CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
LOG_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
LOCK_FILE = ".lock"
FORMAT_FILE = "format.jsonl"

# Keys that change how often or how things happen, not what is computed
# (the model keys keep parameters and results): a resumed run may change
# them freely, e.g. unroll on a GPU a run begun scanned on a CPU.
VOLATILE_KEYS = (
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.max_checkpoints",
    "train.allow_config_change",
    "data.path",
    "data.tfds_data_dir",
    "data.download_dir",
    "model.scan",
    "model.scan_unroll",
    "model.remat",
    "model.cpu_conv_grad",
    "train.compilation_cache",
    "train.fast_compile",
)


def make_dir(path: str) -> None:
  """Creates ``path`` (and parents) or raises one line naming it."""
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError:
    raise WorkdirError(
        f"workdir {path} exists and is not a directory; "
        "choose another --workdir"
    ) from None
  except OSError as e:
    raise WorkdirError(
        f"cannot create workdir {path}: {e.strerror}; "
        "choose a writable --workdir"
    ) from None


class WorkdirLock:
  """Holds ``workdir/.lock`` for one run; a second run is refused.

  The file exists while a run holds it (a killed holder may leave it, but
  the kernel has released its lock). It is removed on exit so that a run
  that failed before writing anything leaves the workdir as it found it;
  a run that opened the file just before that removal sees it gone after
  locking and takes a fresh one.

  Raises (on enter):
    WorkdirError: the workdir is held by another live process (named by
      pid and host), or cannot be written (full, permissions).
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    workdir = os.path.dirname(self._path)
    while self._fd is None:
      fd = _os_call(workdir, os.open, self._path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        holder = os.read(fd, 200).decode(errors="replace").strip()
        os.close(fd)
        raise WorkdirError(
            f"workdir {workdir} is in use by another run "
            f"({holder or 'unknown'}); wait for it to finish or choose "
            "another --workdir"
        ) from None
      if not _same_file(fd, self._path):
        os.close(fd)  # its holder removed it as we opened it: take the new one
        continue
      self._fd = fd
    try:
      _os_call(workdir, os.ftruncate, self._fd, 0)
      _os_call(
          workdir,
          os.write,
          self._fd,
          f"pid {os.getpid()} on {socket.gethostname()}".encode(),
      )
    except WorkdirError:
      self.__exit__()
      raise
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      # Removed while still held, so no other run can hold this file.
      with contextlib.suppress(OSError):
        os.remove(self._path)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except OSError:
    return False


def _os_call(workdir: str, fn, *args):
  """``fn(*args)``, an OSError becoming one line naming ``workdir``."""
  try:
    return fn(*args)
  except OSError as e:
    raise WorkdirError(
        f"cannot write in workdir {workdir}: {e.strerror}; "
        "free space or choose a writable --workdir"
    ) from None


@contextlib.contextmanager
def writing(path: str):
  """Turns an OSError while writing ``path`` into one line naming it.

  Raises:
    WorkdirError: the file cannot be written (disk full, permissions).
  """
  try:
    yield
  except OSError as e:
    raise WorkdirError(
        f"cannot write {path}: {e.strerror or e}; free space (or fix its "
        "permissions) and run the same command to resume"
    ) from None


def _flat(tree: dict[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep=".")


def _config_dict(config) -> dict[str, Any]:
  return _flat(json.loads(config.to_json()))


# Model keys whose "" means the network's own choice (base_config sets them
# so); a run written with the chosen value spelled out is the same run.
_CHOSEN = ("block", "projection")


def _chosen(flat: dict[str, Any]) -> dict[str, Any]:
  """``flat`` with ``model.block`` and ``model.projection`` resolved.

  A model section that does not resolve (keys of another resflax) is
  compared as written: any difference then counts as a change.
  """
  model = {k[6:]: v for k, v in flat.items() if k.startswith("model.")}
  try:
    cfg = models.resolve(model)
  except (ValueError, TypeError, KeyError):
    return flat
  return {**flat, **{f"model.{k}": getattr(cfg, k) for k in _CHOSEN}}


def config_changes(
    config: ml_collections.ConfigDict, workdir: str
) -> list[str] | None:
  """Keys whose values differ from the workdir's config.json.

  Returns None for a new workdir. Keys missing from the saved config (added
  to resflax after it was written) count only if they differ from their
  defaults; keys in ``VOLATILE_KEYS`` never count.
  """
  saved = saved_config(workdir)
  if saved is None:
    return None
  now = _chosen(_config_dict(config))
  saved = _chosen(saved)
  defaults = _config_dict(base_config())
  return sorted(
      k
      for k in set(saved) | set(now)
      if k not in VOLATILE_KEYS
      and saved.get(k, defaults.get(k)) != now.get(k, defaults.get(k))
  )


def saved_config(workdir: str) -> dict[str, Any] | None:
  """The workdir's config.json, flattened (None for a new workdir).

  Raises:
    ConfigError: config.json cannot be read or is not a JSON object.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    saved = fileio.read_json(path)
  except (OSError, ValueError) as e:
    why = getattr(e, "strerror", None) or " ".join(str(e).split())
    raise ConfigError(
        f"{path} cannot be read ({why}); restore it (the last line of "
        f"{CONFIG_HISTORY_FILE} holds the config in force) or choose "
        "another --workdir"
    ) from None
  if not isinstance(saved, dict):
    raise ConfigError(
        f"{path} holds no config object; restore it (the last "
        f"line of {CONFIG_HISTORY_FILE} holds the config in "
        "force) or choose another --workdir"
    )
  return _flat(saved)


def with_defaults(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A saved config with the keys resflax added since taking their defaults.

  A run's config.json holds the keys of the resflax that wrote it; code
  reading it with today's (``train.warmup_window``, say) needs every key.
  """

  def fill(into: dict[str, Any], defaults: dict[str, Any]) -> None:
    for k, v in defaults.items():
      if k not in into:
        into[k] = v
      elif isinstance(v, dict) and isinstance(into[k], dict):
        fill(into[k], v)

  out = json.loads(json.dumps(saved))
  fill(out, json.loads(base_config().to_json()))
  return ml_collections.ConfigDict(out)


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
    lines = "; ".join(describe_changes(config, workdir, diff[:10]))
    raise ConfigError(
        f"workdir {workdir} holds a run with a different config ({lines}). "
        "Use another --workdir, or set --config.train.allow_config_change="
        "True to continue it anyway."
    )
  logging.warning(
      "continuing %s with config changes %s; config.json is "
      "replaced once the new config has saved a checkpoint",
      workdir,
      diff,
  )
  return True


def describe_changes(
    config: ml_collections.ConfigDict, workdir: str, keys: list[str]
) -> list[str]:
  """``"key: old -> new"`` for each of ``keys`` against config.json."""
  saved, now = saved_config(workdir) or {}, _config_dict(config)
  return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys]


def write_config(
    config: ml_collections.ConfigDict, workdir: str, step: int
) -> None:
  """Makes ``config`` the workdir's config from ``step`` on (history kept)."""
  text = config.to_json(indent=2, sort_keys=True)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
  append_line(
      os.path.join(workdir, CONFIG_HISTORY_FILE),
      {"from_step": step, "config": json.loads(config.to_json())},
  )
  with writing(path):
    fileio.write_atomic(path, text)


def write_configs(pairs, step: int, missing_only: bool = False) -> None:
  """Makes each ``(config, run_dir)``'s config that dir's from ``step``.

  A new run writes them at step 0 (``missing_only``: an unchanged run keeps
  the files it has); a changed config at its first checkpoint, recording
  the step it was in force from: the step it resumed at.
  """
  for c, d in pairs:
    make_dir(d)
    if not (missing_only and os.path.exists(os.path.join(d, CONFIG_FILE))):
      write_config(c, d, step)


def _format_lines(workdir: str) -> list[dict[str, int]]:
  path = os.path.join(workdir, FORMAT_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      lines = [json.loads(line) for line in f if line.strip()]
    return [
        {"from_step": int(r["from_step"]), "version": int(r["version"])}
        for r in lines
    ]
  except (OSError, ValueError, TypeError, KeyError) as e:
    why = getattr(e, "strerror", None) or " ".join(str(e).split())
    raise CheckpointError(
        f"{path} cannot be read ({why}); its checkpoints' format is unknown: "
        "restore the file from a backup or choose another --workdir"
    ) from None


def format_version(workdir: str, step: int) -> int | None:
  """The train-state format version of checkpoint ``step`` in ``workdir``.

  Returns:
    The version recorded for ``step``, or None for a checkpoint written
    before workdirs recorded one (``formats.infer_version`` tells it).

  Raises:
    CheckpointError: the format file cannot be read.
  """
  versions = [
      r["version"] for r in _format_lines(workdir) if r["from_step"] <= step
  ]
  return versions[-1] if versions else None


def record_format(workdir: str, step: int) -> None:
  """Records that the run starting at ``step`` saves ``formats.CURRENT``.

  A new run (step 0) records it from step 0; a run resumed from an older
  format, from ``step + 1`` on: its newer checkpoints are in today's
  format, the older ones it keeps stay in theirs. Nothing changes when the
  last line already says ``CURRENT``.

  Raises:
    WorkdirError: the file cannot be written (disk full, permissions).
    CheckpointError: the existing file cannot be read.
  """
  lines = _format_lines(workdir)
  if lines and lines[-1]["version"] == formats.CURRENT:
    return
  append_line(
      os.path.join(workdir, FORMAT_FILE),
      {"from_step": step + 1 if step else 0, "version": formats.CURRENT},
  )


def append_line(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON line to ``path`` and flushes it to disk.

  Raises:
    WorkdirError: the line cannot be written (disk full, permissions).
  """
  with writing(path), open(path, "a") as f:
    f.write(fileio.to_json_string(record, indent=None).rstrip("\n") + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_file(path: str, data) -> None:
  """``fileio.write_atomic``, failing in one line naming ``path``."""
  with writing(path):
    fileio.write_atomic(path, data)


def write_json(path: str, value) -> None:
  """``fileio.write_json``, failing in one line naming ``path``."""
  with writing(path):
    fileio.write_json(path, value)


class RunLog:
  """The append-only ``metrics.jsonl`` of one run.

  Each line is ``{"step": s, "kind": "train"|"eval"|"checkpoint", ...}``.
  Checkpoint lines carry the cumulative ``train_seconds`` and ``timed_steps``
  at that step, so a resumed run's throughput spans all its segments.
  """

  def __init__(self, run_dir: str, enabled: bool = True):
    self.path = os.path.join(run_dir, LOG_FILE)
    self._enabled = enabled
    self._warned = False

  def records(self) -> list[dict[str, Any]]:
    """Every record, in file order (damaged lines left out, see ``read``)."""
    return self.read()[0]

  def read(self):
    """The records and the numbers of the damaged lines left out.

    A last line that does not parse was cut by a kill mid-write and is
    dropped; a damaged line inside the file is skipped, keeping the lines
    after it, and reported once per RunLog as a warning.

    Returns:
      ``(records, damaged)``: the records and the 1-based line numbers of
      damaged lines inside the file.
    """
    if not os.path.exists(self.path):
      return [], []
    with open(self.path, "rb") as f:
      lines = f.read().decode("utf-8", errors="replace").split("\n")
    out, bad = [], []
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        ok = (
            isinstance(record, dict)
            and isinstance(record.get("step"), int)
            and isinstance(record.get("kind"), str)
        )
      except ValueError:
        ok = False
      if ok:
        out.append(record)
      elif any(rest.strip() for rest in lines[number:]):
        bad.append(number)  # lines follow: damage, not a cut last line
    if bad and not self._warned:
      self._warned = True
      logging.warning(
          "%s: skipped %d damaged line(s) (line %s), kept the " "other %d",
          self.path,
          len(bad),
          ", ".join(map(str, bad[:5])),
          len(out),
      )
    return out, bad

  def rewind(self, step: int) -> dict[str, float]:
    """Drops what came after checkpoint ``step`` (it will be redone).

    Returns:
      The cumulative timing at that checkpoint: ``train_seconds`` and
      ``timed_steps`` (zeros for a new run or an older workdir).

    Raises:
      WorkdirError: the log cannot be rewritten (disk full, permissions).
    """
    kept = [r for r in self.records() if r["step"] <= step]
    if self._enabled and os.path.exists(self.path):
      write_file(
          self.path,
          "".join(
              fileio.to_json_string(r, indent=None).rstrip("\n") + "\n"
              for r in kept
          ),
      )
    marks = [r for r in kept if r["kind"] == "checkpoint" and r["step"] == step]
    if not marks:
      return {"train_seconds": 0.0, "timed_steps": 0}
    return {
        "train_seconds": marks[-1]["train_seconds"],
        "timed_steps": marks[-1]["timed_steps"],
    }

  def append(self, step: int, kind: str, **values) -> None:
    if self._enabled:
      append_line(self.path, {"step": int(step), "kind": kind, **values})

  def history(self) -> list[dict[str, Any]]:
    """The evaluations, in step order (one per step)."""
    evals = {r["step"]: r for r in self.records() if r["kind"] == "eval"}
    return [
        {k: v for k, v in evals[s].items() if k != "kind"}
        for s in sorted(evals)
    ]

  def last(self, kind: str, key: str):
    values = [r[key] for r in self.records() if r["kind"] == kind and key in r]
    return values[-1] if values else None


def versions() -> dict[str, str]:
  """The versions a result was produced with."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top

  return {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", ""),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "orbax-checkpoint": orbax.checkpoint.__version__,
  }


def write_failure(
    run_dir: str, message: str, seed: int, step: int | None
) -> None:
  """Records a diverged run in ``run_dir/failed.json`` (a sweep skips it)."""
  write_json(
      os.path.join(run_dir, FAILED_FILE),
      {"error": message, "type": "TrainingError", "seed": seed, "step": step},
  )


def finished_results(run_dir: str, steps: int) -> dict[str, Any] | None:
  """The results of a run in ``run_dir`` that finished ``steps`` steps."""
  path = os.path.join(run_dir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  try:
    result = fileio.read_json(path)
  except (OSError, ValueError) as e:
    logging.warning(
        "%s cannot be read (%s); finishing the run again " "rewrites it",
        path,
        getattr(e, "strerror", None) or e,
    )
    return None
  if not isinstance(result, dict):
    logging.warning(
        "%s holds no results object; finishing the run again " "rewrites it",
        path,
    )
    return None
  return result if result.get("steps") == steps else None

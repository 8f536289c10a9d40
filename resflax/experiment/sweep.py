"""Running a sweep: every case x seed of a table, then the results table.

The cases come from an experiment file (``resflax.experiment.cases``).

Layout of a sweep's workdir ``DIR``:
  DIR/<case>/seed<s>/        one run, ``training.train_and_evaluate``'s workdir
                             (config.json, checkpoints/, events, results.json)
  DIR/<case>/seed<s>/failed.json   the run failed (non-finite; TrainingError)
  DIR/results.md, DIR/results.csv, DIR/results.png   the table (``tables``)
With ``config.train.parallel_runs == config.seeds`` every case trains its
seeds in one program: DIR/<case> then holds the program's config.json and
stacked checkpoints, and each run's files stay in DIR/<case>/seed<s>/.

A restarted sweep skips every run with a results.json or failed.json (delete
failed.json to try a failed run again) and resumes an interrupted run from
its checkpoints.
"""

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from resflax import fileio, training
from resflax.errors import ConfigError, TrainingError
from resflax.experiment import figures, tables
from resflax.experiment.cases import (
    FAILED_FILE,
    RESULTS_FILE,
    case_config,
    case_names,
    run_dir,
    run_status,
    seeds,
)
from resflax.training import metrics
from resflax.training import workdir as workdir_lib

# The table and figures are redrawn after a run when this long has passed
# since they were last written, and always at the end.
OUTPUTS_EVERY_SECONDS = 60.0


def _check(config: ml_collections.ConfigDict) -> bool:
  """Validates the sweep and every case before anything trains.

  Returns:
    Whether the seeds of a case train in one program.
  """
  if config.seeds < 1:
    raise ConfigError(f"config.seeds={config.seeds} must be >= 1")
  if not case_names(config):
    raise ConfigError("config.sweep_cases is empty: nothing to run")
  if tuple(config.train.run_overrides):
    raise ConfigError(
        "config.train.run_overrides cannot be combined with a sweep: "
        "declare per-run values as sweep cases"
    )
  r = config.train.parallel_runs
  if r not in (1, config.seeds):
    raise ConfigError(
        f"config.train.parallel_runs={r}: a sweep trains its seeds one after "
        f"another (1) or all of a case's seeds in one program "
        f"(config.seeds={config.seeds})"
    )
  missing = set(config.sweep_order) - set(config.sweep_cases)
  if missing:
    raise ConfigError(
        "config.sweep_order names cases that are not in config.sweep_cases: "
        f"{sorted(missing)}"
    )
  for case in case_names(config):
    training.validate_config(
        case_config(config, case, seed=config.seed, parallel_runs=r)
    )
  return r > 1


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every case x seed of a sweep config and writes the table.

  The log shows the first run as a single run shows it (devices, data,
  model, schedule, progress), then one line per run: its case, seeds, test
  error, time and the sweep's ETA.

  Args:
    config: from an experiment file's ``get_config`` (see ``experiment``).
    workdir: the sweep's directory (layout in the module docstring).

  Returns:
    ``{"rows": [one dict per case, see tables.case_rows], "files": [the
    results and figure files]}``, or
    ``{"interrupted": True}`` when a run was stopped by SIGTERM (its
    checkpoint is saved; run the same command to resume).

  Raises:
    ConfigError: an invalid case, before anything trains.
    Errors other than ``TrainingError`` (data, checkpoints) stop the
    sweep; a TrainingError only marks its run as failed.
  """
  parallel = _check(config)
  workdir_lib.make_dir(workdir)
  units = (
      [(case, tuple(seeds(config))) for case in case_names(config)]
      if parallel
      else [(case, (s,)) for case in case_names(config) for s in seeds(config)]
  )
  todo = [
      u
      for u in units
      if any(run_status(run_dir(workdir, u[0], s)) is None for s in u[1])
  ]
  logging.info(
      "sweep: %d cases x %d seed%s in %s, %d of %d %s to do",
      len(case_names(config)),
      config.seeds,
      "s" if config.seeds > 1 else "",
      workdir,
      len(todo),
      len(units),
      "programs" if parallel else "runs",
  )
  sweep_start = written = time.perf_counter()
  durations = []
  for k, (case, members) in enumerate(todo):
    start = time.perf_counter()
    # Later runs repeat the first one's start block and progress: brief.
    result = (
        _run_parallel(config, workdir, case, brief=k > 0)
        if parallel
        else _run_one(config, workdir, case, members[0], brief=k > 0)
    )
    durations.append(time.perf_counter() - start)
    if result.get("interrupted"):
      _write_outputs(workdir, config)
      return {"interrupted": True}
    _log_run(
        workdir,
        case,
        members,
        units.index((case, members)) + 1,
        len(units),
        durations,
        len(todo) - k - 1,
    )
    # Redrawing the table takes about a second: after every run of a long
    # sweep, not after every run of a smoke sweep.
    if time.perf_counter() - written >= OUTPUTS_EVERY_SECONDS:
      _write_outputs(workdir, config)
      written = time.perf_counter()
  rows, paths = _write_outputs(workdir, config)
  logging.info(
      "sweep done in %s; results: %s",
      metrics.format_duration(time.perf_counter() - sweep_start),
      ", ".join(paths),
  )
  return {"rows": rows, "files": paths}


def _log_run(
    workdir: str,
    case: str,
    members,
    index: int,
    total: int,
    durations,
    left: int,
) -> None:
  """One line for a finished run (or program): test errors, time, ETA."""
  if jax.process_index() != 0:
    return  # process 0 wrote the results it reads, and logs for the job
  outcomes, failures = [], []
  for s in members:
    path = run_dir(workdir, case, s)
    if run_status(path) == "ok":
      error = fileio.read_json(os.path.join(path, RESULTS_FILE))["test_error"]
      outcomes.append(f"{100 * error:.2f}%")
    else:
      outcomes.append("failed")
      failures.append(f"seed {s}: {_failure(path)}")
  eta = (
      f"; sweep ETA {metrics.format_duration(left * np.mean(durations))}"
      if left
      else ""
  )
  plural = "s" if len(members) > 1 else ""
  result = (
      f"test error {', '.join(outcomes)}"
      if len(failures) < len(members)
      else "failed"
  )
  line = (
      f"run {index} of {total}: {case}, seed{plural} "
      f"{','.join(map(str, members))}: {result} "
      f"({metrics.format_duration(durations[-1])}){eta}"
  )
  if failures:
    logging.warning("%s; %s", line, "; ".join(failures))
  else:
    logging.info("%s", line)


def _failure(path: str) -> str:
  try:
    return fileio.read_json(os.path.join(path, FAILED_FILE))["error"]
  except (OSError, ValueError, KeyError):
    return "no results"


def _write_outputs(workdir: str, config):
  rows = tables.write_tables(workdir, config)
  paths = [
      os.path.join(workdir, f"results.{ext}") for ext in ("md", "csv", "png")
  ]
  return rows, paths + figures.write_figures(workdir, config)


def _run_one(
    config, workdir: str, case: str, seed: int, *, brief: bool
) -> dict[str, Any]:
  path = run_dir(workdir, case, seed)
  try:
    return training.train_and_evaluate(
        case_config(config, case, seed=seed), path, brief=brief
    )
  except TrainingError:
    # The run wrote failed.json; _log_run reports it and the sweep goes on.
    return {"failed": True}


def _run_parallel(
    config, workdir: str, case: str, *, brief: bool
) -> dict[str, Any]:
  path = os.path.join(workdir, case)
  try:
    return training.train_and_evaluate(
        case_config(config, case, seed=config.seed, parallel_runs=config.seeds),
        path,
        brief=brief,
    )
  except TrainingError:
    # The program wrote failed.json for each diverged run and results.json
    # for the others; _log_run reports them.
    return {"failed": True}

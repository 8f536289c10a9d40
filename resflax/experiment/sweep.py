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
from typing import Any, Dict

from absl import logging
import ml_collections

from resflax import training
from resflax.errors import ConfigError, TrainingError
from resflax.experiment import tables
from resflax.experiment.cases import (case_config, case_names, run_dir,
                                      run_status, seeds)

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
        "declare per-run values as sweep cases")
  r = config.train.parallel_runs
  if r not in (1, config.seeds):
    raise ConfigError(
        f"config.train.parallel_runs={r}: a sweep trains its seeds one after "
        f"another (1) or all of a case's seeds in one program "
        f"(config.seeds={config.seeds})")
  missing = set(config.sweep_order) - set(config.sweep_cases)
  if missing:
    raise ConfigError(
        "config.sweep_order names cases that are not in config.sweep_cases: "
        f"{sorted(missing)}")
  for case in case_names(config):
    training.validate_config(case_config(config, case, seed=config.seed,
                                      parallel_runs=r))
  return r > 1


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains every case x seed of a sweep config and writes the table.

  Args:
    config: from an experiment file's ``get_config`` (see ``experiment``).
    workdir: the sweep's directory (layout in the module docstring).

  Returns:
    ``{"rows": [one dict per case, see resflax.tables.case_rows]}``, or
    ``{"interrupted": True}`` when a run was stopped by SIGTERM (its
    checkpoint is saved; run the same command to resume).

  Raises:
    ConfigError: an invalid case, before anything trains.
    Errors other than ``TrainingError`` (data, checkpoints) stop the
    sweep; a TrainingError only marks its run as failed.
  """
  parallel = _check(config)
  os.makedirs(workdir, exist_ok=True)
  names = case_names(config)
  for case in names:
    pending = [s for s in seeds(config)
               if run_status(run_dir(workdir, case, s)) is None]
    if not pending:
      logging.info("sweep: %s is done (%d seeds)", case, config.seeds)
      continue
    if parallel:
      result = _run_parallel(config, workdir, case)
    else:
      result = None
      for s in pending:
        result = _run_one(config, workdir, case, s)
        if result.get("interrupted"):
          break
    tables.write_tables(workdir, config)
    if result and result.get("interrupted"):
      return {"interrupted": True}
  return {"rows": tables.write_tables(workdir, config)}


def _run_one(config, workdir: str, case: str, seed: int) -> Dict[str, Any]:
  path = run_dir(workdir, case, seed)
  logging.info("sweep: training %s seed %d in %s", case, seed, path)
  try:
    return training.train_and_evaluate(case_config(config, case, seed=seed), path)
  except TrainingError as e:
    # The run wrote failed.json; the sweep goes on with the next run.
    logging.error("sweep: %s seed %d failed: %s", case, seed, e)
    return {"failed": True}


def _run_parallel(config, workdir: str, case: str) -> Dict[str, Any]:
  path = os.path.join(workdir, case)
  logging.info("sweep: training %s, seeds %s, in one program in %s", case,
               seeds(config), path)
  try:
    return training.train_and_evaluate(
        case_config(config, case, seed=config.seed,
                    parallel_runs=config.seeds), path)
  except TrainingError as e:
    # The program wrote failed.json for each diverged run and results.json
    # for the others.
    logging.error("sweep: %s: %s", case, e)
    return {"failed": True}

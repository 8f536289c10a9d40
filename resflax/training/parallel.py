"""Training a group of parallel runs in one compiled program.

``train.parallel_runs = R > 1`` trains the R runs of ``runs.run_configs``
with the train state stacked on a leading run axis and the step vmapped
(``runs.vmapped_step``). ``GroupTrainer`` is ``trainer.Trainer`` with the
per-run parts done once per run: each run's log, event file, curves,
divergence and results in its ``seed<s>/``, and the group's combined
``results.json`` at the top. Stopping, resuming, checkpoints and the loop
itself are the single run's.
"""

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from resflax.errors import TrainingError
from resflax.training import feeds, runs
from resflax.training import metrics as metrics_lib
from resflax.training import workdir as workdir_lib
from resflax.training.preemption import StopSignal
from resflax.training.runs import Runs
from resflax.training.state import RunSpec, learning_rate
from resflax.training.trainer import (
    Trainer,
    common_results,
    interval_means,
    train_rate,
)


def _run(tree, k: int):
  """Run ``k``'s slice of a stacked tree."""
  return jax.tree.map(lambda x: x[k], tree)


class GroupTrainer(Trainer):
  """Trains the runs of ``group`` together, each recorded as its own run."""

  def __init__(
      self,
      group: Runs,
      spec: RunSpec,
      feed,
      stop: StopSignal,
      *,
      config_changed: bool,
      brief: bool = False,
  ):
    super().__init__(
        group.config,
        group.workdir,
        spec,
        feed,
        stop,
        config_changed=config_changed,
        is_main=group.is_main,
        brief=brief,
    )
    self.group = group
    self.logs = [workdir_lib.RunLog(d, group.is_main) for d in group.dirs]
    self.writers: list[Any] = []
    self.failed_runs: dict[int, str] = {}  # run index -> why it diverged

  def initial_state(self):
    return runs.initial_state(self.group, self.spec, self.feed.image_shape)

  def make_step(self):
    return runs.vmapped_step(self.group, self.spec, self.feed)

  def finished(self) -> bool:
    return all(
        workdir_lib.finished_results(d, self.t.steps) is not None
        for d in self.group.dirs
    )

  def config_files(self):
    return self.group.config_files()

  def _params(self, state):
    return _run(feeds.fetch(state.variables["params"]), 0)

  def _rewind(self, step: int) -> dict[str, Any]:
    clock = self.logs[0].rewind(step)
    for log in self.logs[1:]:
      log.rewind(step)
    return clock

  def _open_writers(self, step: int) -> None:
    self.writers = [metrics_lib.create_writer(d) for d in self.group.dirs]
    if step == 0:
      for w, c in zip(self.writers, self.group.configs):
        w.write_hparams(c.to_dict())

  def _writers(self) -> list[Any]:
    return self.writers

  def _logs(self) -> list[Any]:
    return self.logs

  def _runs_axis(self) -> int:
    return self.group.count

  def _report(self, state, step, to_terminal: bool, failed_too=False) -> None:
    g = self.group
    m = feeds.fetch(state.metrics)
    losses, errors, seen = interval_means(m, self.last)
    if seen.max() <= 0:
      return
    self.last = m
    warm = feeds.fetch(state.warm)
    ok = [k for k in range(g.count) if failed_too or k not in self.failed_runs]
    rates = [
        float(learning_rate(step - 1, bool(warm[k]), g.configs[k].train))
        for k in range(g.count)
    ]
    for k in ok:
      scalars = {
          "train_loss": float(losses[k]),
          "train_error": float(errors[k]),
          "learning_rate": rates[k],
      }
      self.writers[k].write_scalars(step, scalars)
      self.logs[k].append(step, "train", **scalars)
    if to_terminal:
      ok = ok or list(range(g.count))
      speed = self.progress.report(
          step,
          self.t.batch_size * g.count,
          {
              "train_loss": float(np.mean(losses[ok])),
              "train_error": float(np.mean(errors[ok])),
              "learning_rate": rates[ok[0]],
              "failed_runs": len(self.failed_runs),
          },
      )
      if "images_per_sec" in speed:  # compilation excluded (reset_timer)
        for w in self.writers:
          w.write_scalars(
              step, {"images_per_second": speed["images_per_sec"] / g.count}
          )

  def _evaluate(self, state, step) -> None:
    ev = feeds.fetch(self.feed.evaluate(state.variables))
    name = self.feed.eval_split
    for k in range(self.group.count):
      scalars = {
          f"{name}_error": float(ev["error"][k]),
          f"{name}_loss": float(ev["loss"][k]),
      }
      self.writers[k].write_scalars(step, scalars)
      self.logs[k].append(step, "eval", **scalars)
    logging.log(
        self.detail,
        "step %d: %s error %s",
        step,
        name,
        " ".join(f"{e:.4f}" for e in ev["error"]),
    )

  def _write_curves(self) -> None:
    if not self.is_main:
      return
    g = self.group
    for log, c, d in zip(self.logs, g.configs, g.dirs):
      self._draw_curves(log, c, d)

  def _check_finite(self, state) -> None:
    """Records newly diverged runs; raises once every run has diverged."""
    if self.t.on_nonfinite != "stop":
      return
    g = self.group
    bad = feeds.fetch(state.nonfinite_step)
    for k in np.flatnonzero(bad >= 0):
      if k not in self.failed_runs:
        self.failed_runs[int(k)] = self._describe(
            _run(state, k), int(bad[k]), g.configs[k], int(k)
        )
        logging.warning(
            "run %d (seed %d): %s", k, g.configs[k].seed, self.failed_runs[k]
        )
    if len(self.failed_runs) == g.count:
      if g.is_main:
        for k, d in enumerate(g.dirs):
          workdir_lib.write_failure(
              d, self.failed_runs[k], g.configs[k].seed, int(bad[k]) + 1
          )
      self._log_divergence(state, int(bad.min()))
      raise TrainingError(
          f"all {g.count} parallel runs in {g.workdir} diverged; first: "
          f"{self.failed_runs[0]}"
      )

  def _finish(self, state, step) -> dict[str, Any]:
    """Evaluates every run and writes its results, then the group's."""
    g = self.group
    self._check_finite(state)
    ev, test = self._test_evaluation(state)
    timing = self._timing(step)
    rate = train_rate(timing, self.t.batch_size * g.count)
    common = common_results(
        self, step, timing, None if rate is None else rate / g.count
    )
    skipped = feeds.fetch(state.skipped)
    variables = feeds.fetch(state.variables)
    summary = []
    for k, (c, d) in enumerate(zip(g.configs, g.dirs)):
      entry = {"seed": c.seed, "dir": os.path.basename(d)}
      if k in self.failed_runs:
        why = self.failed_runs[k]
        summary.append({**entry, "status": "failed", "error": why})
        if g.is_main:
          workdir_lib.write_failure(d, why, c.seed, None)
        continue
      result = self._result(
          self.logs[k],
          c,
          common,
          test_error=float(test["error"][k]),
          eval_error=float(ev["error"][k]),
          skipped=int(skipped[k]),
          variables=_run(variables, k),
      )
      result["parallel"] = {"runs": g.count, "index": k, "workdir": g.workdir}
      if g.is_main:
        workdir_lib.write_json(
            os.path.join(d, workdir_lib.RESULTS_FILE), result
        )
      summary.append(
          {**entry, "status": "ok", "test_error": result["test_error"]}
      )
    combined = runs.write_combined(
        g, summary, step, timing, rate, self.wall_start
    )
    if self.failed_runs:
      raise runs.partly_diverged(g, self.failed_runs)
    return combined

  def _log_results(self) -> None:
    if self.is_main:
      logging.log(
          self.detail,
          "results: %s; each run's results.json and curves.png in %s/seed<s>",
          os.path.join(self.workdir, workdir_lib.RESULTS_FILE),
          self.workdir,
      )

"""One run's training: from the restored step to the end, or to a stop.

``Trainer(...).run()`` is what ``train_and_evaluate`` does once the config
is checked and the data is on the devices: build the state
(``state.init_state``), restore the last checkpoint if there is one, call the
compiled SGD step (``make_step``: ``step.step_on_dataset`` or
``step.step_on_batch``) ``train.steps`` times with periodic reports,
evaluations and checkpoints, then evaluate and write ``results.json``.
Everything here is one run's: one state, one log, one event file. A group
of parallel runs (``train.parallel_runs > 1``) is ``parallel.GroupTrainer``,
which overrides the parts that are per run (state, step, records, results).
"""

import functools
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from resflax import fileio, models
from resflax.errors import CheckpointError, TrainingError, WorkdirError
from resflax.training import checkpoint as checkpoint_lib
from resflax.training import curves, diverged, feeds
from resflax.training import metrics as metrics_lib
from resflax.training import workdir as workdir_lib
from resflax.training.memory_fit import checked_step
from resflax.training.preemption import StopSignal
from resflax.training.resume import check_steps
from resflax.training.resume import restore as _restore
from resflax.training.state import (
    RunSpec,
    TrainState,
    initial_state,
    learning_rate,
    lr_drop_steps,
)

PyTree = Any


def make_step(spec: RunSpec, feed):
  """``step(state, *feed.step_args()) -> state``, jitted, state donated.

  One SGD step is ``feed.step_impl``: ``step.step_on_dataset`` (the dataset
  on the devices) or ``step.step_on_batch`` (streamed batches).
  """
  return jax.jit(
      functools.partial(feed.step_impl, spec),
      donate_argnums=0,
      **spec.jit_options,
  )


def interval_means(m, last) -> tuple[Any, Any, Any]:
  """Mean loss and error since the last report, and the images seen.

  ``m`` and ``last`` are host ``TrainMetrics`` (running totals; any leading
  run axis is kept).
  """
  seen = m.error.count - last.error.count
  loss = (m.loss.total - last.loss.total) / np.maximum(
      m.loss.count - last.loss.count, 1
  )
  return loss, (m.error.total - last.error.total) / np.maximum(seen, 1), seen


def train_rate(timing: dict[str, float], images_per_step: int):
  """Images per second over the timed steps, or None before any."""
  if not timing["train_seconds"]:
    return None
  return timing["timed_steps"] * images_per_step / timing["train_seconds"]


def common_results(trainer: "Trainer", step: int, timing, rate) -> dict:
  """The results every run of one program shares (timing, versions)."""
  return {
      "eval_split": trainer.feed.eval_split,
      "steps": step,
      "wall_seconds": time.perf_counter() - trainer.wall_start,
      "train_seconds": timing["train_seconds"],
      "images_per_second": rate,
      "versions": workdir_lib.versions(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
  }


class Trainer:
  """Trains one run in ``workdir``, resuming from its last checkpoint."""

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: str,
      spec: RunSpec,
      feed,
      stop: StopSignal,
      *,
      config_changed: bool,
      is_main: bool = True,
      brief: bool = False,
  ):
    self.config, self.workdir, self.is_main = config, workdir, is_main
    self.spec, self.feed, self.stop = spec, feed, stop
    self.t = config.train
    # The level of the start block, progress, evaluation and results lines.
    self.detail = logging.DEBUG if brief else logging.INFO
    # "key: old -> new" of an allowed config change, named if it does not
    # fit the checkpoint; written to config.json at its first checkpoint.
    self.changes = (
        workdir_lib.describe_changes(
            config, workdir, workdir_lib.config_changes(config, workdir)
        )
        if config_changed
        else []
    )
    self.ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=self.t.max_checkpoints
    )
    self.log = workdir_lib.RunLog(workdir, is_main)
    self.writer = None  # opened when training starts (``_open_writers``)
    self.failed: str | None = None  # why the run diverged
    self.failed_at = None  # the step it diverged at
    self.wall_start = time.perf_counter()
    self.saved_step = None
    self.resumed_at = 0
    self.clock: dict[str, Any] = {}
    self.progress = None
    self.last = None  # the metrics' running totals at the last report

  # ------------------------------------------------------------------
  # The run

  def run(self) -> dict[str, Any]:
    """Restores, trains to ``train.steps`` and returns the results."""
    t = self.t
    state = self.initial_state()
    restored = _restore(self.ckpt, state, t.batch_size, self.changes)
    if restored is not None:
      state = restored[1]
      logging.info("resumed %s from step %d", self.workdir, restored[0])
    step = self.resumed_at = int(np.ravel(feeds.fetch(state.step))[0])
    check_steps(self.config, self.workdir, step)
    if self.is_main:
      workdir_lib.record_format(self.workdir, step)
    if step >= t.steps and self.finished():
      self.ckpt.close()
      results = os.path.join(self.workdir, workdir_lib.RESULTS_FILE)
      logging.log(
          self.detail,
          "%s already finished its %d steps; results: %s",
          self.workdir,
          t.steps,
          results,
      )
      return fileio.read_json(results)
    self._log_start(state, step)
    self.clock = self._rewind(step)
    self.clock.update(segment_start=None, segment_from=step, eval_seconds=0.0)
    self._check_finite(state)
    try:
      state, step, interrupted = self._loop(state, step)
    except BaseException:
      self._close(failed=True)
      raise
    self._close(failed=False)
    if interrupted:
      return {"interrupted": True, "step": step}
    results = self._finish(state, step)
    self._log_results()
    return results

  def initial_state(self) -> TrainState:
    return initial_state(self.spec, self.config.seed, self.feed.image_shape)

  def make_step(self):
    return make_step(self.spec, self.feed)

  def finished(self) -> bool:
    """Whether the run's results of ``train.steps`` steps are written."""
    return workdir_lib.finished_results(self.workdir, self.t.steps) is not None

  def config_files(self) -> list[tuple[ml_collections.ConfigDict, str]]:
    """``(config, directory)`` of each config.json the run writes."""
    return [(self.config, self.workdir)]

  def _params(self, state):
    """The parameters the start block describes."""
    return state.variables["params"]

  def _log_start(self, state, step: int) -> None:
    params = self._params(state)
    logging.log(
        self.detail,
        "%s",
        metrics_lib.start_block(
            self.workdir,
            self.t.parallel_runs,
            self.feed.summary,
            self.spec.model.config,
            params,
            self.t,
            lr_drop_steps(self.t),
            step,
        ),
    )
    summary = metrics_lib.model_summary(params)
    logging.log(self.detail, "parameters per module:\n%s", summary)

  def _rewind(self, step: int) -> dict[str, Any]:
    """Drops the log's records after ``step``; the clock at ``step``."""
    return self.log.rewind(step)

  def _open_writers(self, step: int) -> None:
    self.writer = metrics_lib.create_writer(self.workdir)
    if step == 0:
      self.writer.write_hparams(self.config.to_dict())

  def _writers(self) -> list[Any]:
    return [self.writer] if self.writer is not None else []

  def _close(self, failed: bool) -> None:
    """Closes checkpoints and event files; after an error (``failed``)
    their own errors (a full disk, say) are logged, not raised, so that the
    first error is the one the user sees."""
    for close in [self.ckpt.close] + [w.close for w in self._writers()]:
      try:
        with workdir_lib.writing(self.workdir):
          close()
      except (CheckpointError, WorkdirError) as e:
        if not failed:
          raise
        logging.warning("after the error below, also: %s", e)

  # ------------------------------------------------------------------
  # The loop

  def _loop(self, state, step):
    t = self.t
    # On a GPU/TPU: compiled here once and refused if it cannot fit.
    step_fn = checked_step(self.make_step(), self.config)
    self.feed.start(self.spec, self._runs_axis(), step)
    self._open_writers(step)
    self.progress = metrics_lib.ProgressLogger(
        t.steps,
        every_steps=t.log_every or None,
        every_secs=None if t.log_every else 60.0,
        start_step=step,
        log_fn=functools.partial(logging.log, self.detail),
    )
    self.last = feeds.fetch(state.metrics)
    if step < t.steps:
      logging.log(self.detail, "compiling the training step...")
    compile_start = time.perf_counter()
    while step < t.steps:
      state = step_fn(state, *self.feed.step_args())
      step += 1
      if self.clock["segment_start"] is None:
        # Throughput excludes the first step of a segment (compilation).
        jax.block_until_ready(state.step)
        now = time.perf_counter()
        logging.log(
            self.detail,
            "compiled and ran the first step in %.1f s",
            now - compile_start,
        )
        self.clock.update(segment_start=now, segment_from=step)
        self.progress.reset_timer(step)
      # Reports and evaluations first: a stop must not skip those of its step.
      self._interval(state, step)
      if self.stop.should_stop(step):
        if self.saved_step != step:
          self._save(state, step, wait=True)
        self.ckpt.wait_until_finished()
        logging.warning(
            "received signal %s: saved step %d to %s and "
            "stopped; run the same command to resume",
            self.stop.received,
            step,
            self.ckpt.directory,
        )
        return state, step, True
    if self.ckpt.latest_step() != step:
      self._save(state, step, wait=True)
    jax.block_until_ready(state.step)
    return state, step, False

  def _runs_axis(self) -> int | None:
    """The feed's leading run axis: None, one run unstacked."""
    return None

  def _interval(self, state, step) -> None:
    """Reports, evaluates and saves when their intervals say so."""
    t = self.t
    self.ckpt.poll()  # seal a background save as soon as it is committed
    report = self.progress.should_report(step)
    do_eval = (t.eval_every and step % t.eval_every == 0) or step == t.steps
    do_ckpt = (
        t.checkpoint_every and step % t.checkpoint_every == 0
    ) or step == t.steps
    if not (report or do_eval or do_ckpt):
      return
    self._check_finite(state)
    self._report(state, step, report)
    if do_eval:
      start = time.perf_counter()
      self._evaluate(state, step)
      self._write_curves()
      self.clock["eval_seconds"] += time.perf_counter() - start
    if do_ckpt:
      # Interval saves copy the state off the device and write in the
      # background while training goes on; the last one is waited for.
      self._save(state, step, wait=step == t.steps)
    for w in self._writers():
      w.flush()
    if do_eval:
      self.progress.reset_timer(step)

  def _report(self, state, step, to_terminal: bool, failed_too=False) -> None:
    """The training loss and error since the last report."""
    del failed_too  # one run: a diverged run's report is its last
    m = feeds.fetch(state.metrics)
    loss, error, seen = interval_means(m, self.last)
    if seen <= 0:
      return
    self.last = m
    warm = bool(feeds.fetch(state.warm))
    scalars = {
        "train_loss": float(loss),
        "train_error": float(error),
        "learning_rate": float(learning_rate(step - 1, warm, self.t)),
    }
    self.writer.write_scalars(step, scalars)
    self.log.append(step, "train", **scalars)
    if to_terminal:
      speed = self.progress.report(step, self.t.batch_size, scalars)
      if "images_per_sec" in speed:  # compilation excluded (reset_timer)
        self.writer.write_scalars(
            step, {"images_per_second": speed["images_per_sec"]}
        )

  def _evaluate(self, state, step) -> None:
    ev = feeds.fetch(self.feed.evaluate(state.variables))
    name = self.feed.eval_split
    scalars = {
        f"{name}_error": float(ev["error"]),
        f"{name}_loss": float(ev["loss"]),
    }
    self.writer.write_scalars(step, scalars)
    self.log.append(step, "eval", **scalars)
    logging.log(
        self.detail, "step %d: %s error %.4f", step, name, float(ev["error"])
    )

  def _write_curves(self) -> None:
    """curves.png, redrawn from the whole log (every segment)."""
    if self.is_main:
      self._draw_curves(self.log, self.config, self.workdir)

  def _draw_curves(self, log, config, run_dir: str) -> None:
    m = self.spec.model.config
    title = f"{m.name} depth {m.depth}, seed {config.seed}: {run_dir}"
    if self.failed_at is not None:
      title += f" (diverged at step {self.failed_at})"
    workdir_lib.write_file(
        os.path.join(run_dir, "curves.png"),
        curves.plot_run(
            log.records(),
            title,
            lr_drops=lr_drop_steps(config.train),
            mark=curves.config_mark(config),
        ),
    )

  def _timing(self, step) -> dict[str, float]:
    """Cumulative train time and timed steps over every segment until
    ``step``, fixed at its first call so that its checkpoint record and
    results.json agree."""
    c = self.clock
    if c.get("step") == step:
      return c["at"]
    if c["segment_start"] is None:
      return {
          "train_seconds": c["train_seconds"],
          "timed_steps": c["timed_steps"],
      }
    seconds = time.perf_counter() - c["segment_start"] - c["eval_seconds"]
    c["step"], c["at"] = step, {
        "train_seconds": c["train_seconds"] + seconds,
        "timed_steps": c["timed_steps"] + step - c["segment_from"],
    }
    return c["at"]

  def _logs(self) -> list[Any]:
    return [self.log]

  def _save(self, state, step, wait: bool) -> None:
    self._check_finite(state)  # never write a checkpoint after a bad step
    if self.is_main:
      # Before the save commits: a kill just after it must not lose the
      # run's time (the record of a step that never committed is rewound).
      for log in self._logs():
        log.append(step, "checkpoint", **self._timing(step))
    self.ckpt.save(step, state, wait=wait)
    self.saved_step = step
    if self.is_main and self.changes:
      workdir_lib.write_configs(self.config_files(), self.resumed_at)
      self.changes = []

  # ------------------------------------------------------------------
  # A non-finite run

  def _check_finite(self, state) -> None:
    """Raises once the run's loss or parameters were not finite."""
    if self.t.on_nonfinite != "stop":
      return
    bad = int(feeds.fetch(state.nonfinite_step))
    if bad < 0:
      return
    self.failed = self._describe(state, bad, self.config, 0)
    if self.is_main:
      workdir_lib.write_failure(
          self.workdir, self.failed, self.config.seed, bad + 1
      )
    self._log_divergence(state, bad)
    raise TrainingError(self.failed)

  def _describe(self, state, bad: int, config, k: int) -> str:
    """Why run ``k`` (``state``, ``config``: its own) diverged at ``bad``."""
    return diverged.describe(
        self.feed,
        self.spec,
        config,
        state,
        bad,
        k,
        float(feeds.fetch(state.nonfinite_value)),
        self.workdir,
        self.ckpt.latest_step(),  # saves follow a finite check only
    )

  def _log_divergence(self, state, bad: int) -> None:
    """The training metrics of the finite steps before step ``bad + 1`` in
    metrics.jsonl, and curves.png marked with the divergence: a diverged
    run's curves are the ones a reader wants to see."""
    if not self._writers():  # diverged in an earlier segment
      return
    self.failed_at = bad + 1
    self._report(state, bad, to_terminal=False, failed_too=True)
    self._write_curves()

  # ------------------------------------------------------------------
  # Results

  def _test_evaluation(self, state):
    """``(eval, test)`` of the final state: the same dict when they match."""
    name = self.feed.eval_split
    ev = feeds.fetch(self.feed.evaluate(state.variables))
    if name == "test" or not self.feed.separate_test:
      return ev, ev
    return ev, feeds.fetch(self.feed.evaluate(state.variables, "test"))

  def _finish(self, state, step) -> dict[str, Any]:
    """Evaluates the final state and writes results.json."""
    self._check_finite(state)
    ev, test = self._test_evaluation(state)
    timing = self._timing(step)
    rate = train_rate(timing, self.t.batch_size)
    result = self._result(
        self.log,
        self.config,
        common_results(self, step, timing, rate),
        test_error=float(test["error"]),
        eval_error=float(ev["error"]),
        skipped=int(feeds.fetch(state.skipped)),
        variables=feeds.fetch(state.variables),
    )
    if self.is_main:
      workdir_lib.write_json(
          os.path.join(self.workdir, workdir_lib.RESULTS_FILE), result
      )
    return result

  def _result(
      self, log, config, common, *, test_error, eval_error, skipped, variables
  ) -> dict[str, Any]:
    """One run's results.json."""
    result = {
        "test_error": test_error,
        **common,
        "skipped_steps": skipped,
        "final_train_error": log.last("train", "train_error"),
        "num_params": models.num_params(variables),
        "history": log.history(),
        "config": config.to_dict(),
    }
    if self.feed.eval_split != "test":
      result[f"{self.feed.eval_split}_error"] = eval_error
    return result

  def _log_results(self) -> None:
    """The run's last line: where its results (and curves) are."""
    if not self.is_main:
      return
    curves_png = os.path.join(self.workdir, "curves.png")
    where = f" (curves: {curves_png})" if os.path.exists(curves_png) else ""
    logging.log(
        self.detail,
        "results: %s%s",
        os.path.join(self.workdir, workdir_lib.RESULTS_FILE),
        where,
    )

"""The training loop: one run, or many runs in one compiled program.

``train_and_evaluate(config, workdir)`` validates the config, loads the data
onto the devices, builds (or restores) the train state, runs the jitted step
with periodic reports, evaluations and checkpoints, and writes the results.
``config.train.parallel_runs = R > 1`` trains R runs (``runs.run_configs``)
with the state stacked on a leading run axis and the step vmapped; a single
run is the unstacked case of the same loop, so stopping, resuming, the
non-finite guard, checkpoints and results exist once; what only a group
needs (its stacked state, vmapped step, combined results) is in ``runs``.
One SGD step is ``resflax.training.step`` (``make_step`` jits it).

Workdir of a single run: ``config.json``, ``checkpoints/<step>/``,
``metrics.jsonl``, TensorBoard events, ``results.json`` (see
``resflax.training.workdir``). Of R parallel runs: ``config.json`` and
``checkpoints/`` (the stacked state) and ``results.json`` (``{"parallel_runs":
R, "runs": [{"seed", "dir", "status", "test_error" | "error"}], ...}``) at
the top, and each run's own ``config.json``, ``metrics.jsonl``, events and
``results.json`` (or ``failed.json``) in ``seed<s>/``.
"""

import contextlib
import functools
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from resflax import fileio, logs, models
from resflax.errors import (
    CheckpointError,
    Stopped,
    TrainingError,
    WorkdirError,
)
from resflax.training import checkpoint as checkpoint_lib
from resflax.training import (
    compile_cache,
    curves,
    diverged,
    feeds,
    runs,
)
from resflax.training import metrics as metrics_lib
from resflax.training import workdir as workdir_lib
from resflax.training.memory_fit import checked_step
from resflax.training.preemption import StopSignal
from resflax.training.resume import check_steps
from resflax.training.resume import restore as _restore
from resflax.training.runs import Runs
from resflax.training.state import (
    RunSpec,
    build_run,
    learning_rate,
    lr_drop_steps,
    make_mesh,
)
from resflax.training.validate import validate_config

PyTree = Any


def make_step(group: Runs, spec: RunSpec, feed):
  """``step(state, *feed.step_args()) -> state``, jitted, state donated.

  One SGD step is ``feed.step_impl``: ``step.step_on_dataset`` (the dataset
  on the devices) or ``step.step_on_batch`` (streamed batches). Parallel
  runs vmap it (``runs.vmapped_step``).
  """
  if group.stacked:
    return runs.vmapped_step(group, spec, feed)
  return jax.jit(
      functools.partial(feed.step_impl, spec),
      donate_argnums=0,
      **spec.jit_options,
  )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, brief: bool = False
) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if possible) and evaluates.

  Args:
    config: an experiment config (see ``resflax.config.base_config``).
    workdir: run directory: checkpoints, logs, TensorBoard events, results.
    brief: the start block, progress, evaluation and results lines at
      DEBUG, not INFO (a sweep's later runs); warnings still show.

  Returns:
    The results (the content of ``results.json``), or ``{"interrupted":
    True, "step": step}`` after SIGTERM.

  Raises:
    resflax.errors.ConfigError: an invalid config, or a workdir holding
      another config.
    resflax.errors.WorkdirError: a workdir in use or not writable.
    resflax.errors.DataError: data that cannot be found or read.
    resflax.errors.TrainingError: a non-finite loss or parameters
      (``on_nonfinite='stop'``; with parallel runs, once any run diverged,
      after the others' results are written).
    resflax.errors.CheckpointError: checkpoints that cannot be written or
      restored.
  """
  logs.setup_logging()
  validate_config(config)
  compile_cache.enable(config.train.compilation_cache)
  workdir_lib.check_config(config, workdir)
  is_main = jax.process_index() == 0
  group = Runs(config, runs.run_configs(config), workdir, is_main)
  if is_main:
    workdir_lib.make_dir(workdir)
  with StopSignal(sigint=True) as stop:
    mesh = make_mesh()
    # Locked before the data loads, so a second run is refused at once.
    lock = workdir_lib.WorkdirLock(workdir) if is_main else None
    with lock or contextlib.nullcontext():
      try:
        # A download or decode can take minutes and polls no flag: SIGTERM
        # raises Stopped inside it (a download keeps its .part to resume).
        with stop.interrupting():
          feed = feeds.make_feed(config, group.configs, mesh)
      except Stopped:
        feed = None  # stop.received is set: reported below, before any use.
      changed = workdir_lib.check_config(config, workdir)
      if is_main and not changed:
        workdir_lib.write_configs(group.config_files(), 0, missing_only=True)
      if stop.received is not None:
        logging.warning(
            "received signal %d while loading data: stopped "
            "before training; run the same command to start",
            stop.received,
        )
        return {"interrupted": True, "step": 0}
      spec = build_run(config, feed.num_classes, feed.num_train, mesh)
      return _Trainer(group, spec, feed, stop, changed, brief).run()


class _Trainer:
  """One segment of training: from the restored step to the end or a stop."""

  def __init__(
      self,
      group: Runs,
      spec: RunSpec,
      feed,
      stop: StopSignal,
      config_changed: bool,
      brief: bool = False,
  ):
    self.group, self.spec, self.feed, self.stop = group, spec, feed, stop
    # The level of the start block, progress, evaluation and results lines.
    self.detail = logging.DEBUG if brief else logging.INFO
    self.t = group.config.train
    # "key: old -> new" of an allowed config change, named if it does not
    # fit the checkpoint; written to config.json at its first checkpoint.
    self.changes = (
        workdir_lib.describe_changes(
            group.config,
            group.workdir,
            workdir_lib.config_changes(group.config, group.workdir),
        )
        if config_changed
        else []
    )
    self.failed: dict[int, str] = {}
    self.failed_at = None  # the step every run had diverged at
    self.ckpt = checkpoint_lib.Checkpointer(
        os.path.join(group.workdir, "checkpoints"),
        max_to_keep=self.t.max_checkpoints,
    )
    self.logs = [workdir_lib.RunLog(d, group.is_main) for d in group.dirs]
    self.wall_start = time.perf_counter()
    self.saved_step = None
    # Set when training starts (``run``, ``_loop``); empty until then, so
    # closing after an early error finds nothing to close.
    self.clock: dict[str, Any] = {}
    self.writers: list[Any] = []
    self.progress = None
    self.last = None  # the metrics' running totals at the last report

  def run(self) -> dict[str, Any]:
    """Restores, trains to ``train.steps`` and returns the results."""
    g, t = self.group, self.t
    state = runs.initial_state(g, self.spec, self.feed.image_shape)
    restored = _restore(self.ckpt, state, self.t.batch_size, self.changes)
    if restored is not None:
      state = restored[1]
      logging.info("resumed %s from step %d", g.workdir, restored[0])
    step = self.resumed_at = int(np.ravel(feeds.fetch(state["step"]))[0])
    check_steps(g.config, g.workdir, step)
    if g.is_main:
      workdir_lib.record_format(g.workdir, step)
    if step >= t.steps:
      finished = [workdir_lib.finished_results(d, t.steps) for d in g.dirs]
      if all(r is not None for r in finished):
        self.ckpt.close()
        logging.log(
            self.detail,
            "%s already finished its %d steps; results:" " %s",
            g.workdir,
            t.steps,
            os.path.join(g.workdir, workdir_lib.RESULTS_FILE),
        )
        return fileio.read_json(
            os.path.join(g.workdir, workdir_lib.RESULTS_FILE)
        )
    params = g.one(state["variables"], 0)["params"]
    start = metrics_lib.start_block(
        g.workdir,
        g.count,
        self.feed.summary,
        self.spec.model.config,
        params,
        t,
        lr_drop_steps(t),
        step,
    )
    logging.log(self.detail, "%s", start)
    summary = metrics_lib.model_summary(params)
    logging.log(self.detail, "parameters per module:\n%s", summary)
    self.clock = self.logs[0].rewind(step)
    for log in self.logs[1:]:
      log.rewind(step)
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

  def _close(self, failed: bool) -> None:
    """Closes checkpoints and event files; after an error (``failed``)
    their own errors (a full disk, say) are logged, not raised, so that the
    first error is the one the user sees."""
    for close in [self.ckpt.close] + [w.close for w in self.writers]:
      try:
        with workdir_lib.writing(self.group.workdir):
          close()
      except (CheckpointError, WorkdirError) as e:
        if not failed:
          raise
        logging.warning("after the error below, also: %s", e)

  # ------------------------------------------------------------------
  # The loop

  def _loop(self, state, step):
    g, t = self.group, self.t
    # On a GPU/TPU: compiled here once and refused if it cannot fit.
    step_fn = checked_step(make_step(g, self.spec, self.feed), g.config)
    self.feed.start(self.spec, g.count if g.stacked else None, step)
    self.writers = [metrics_lib.create_writer(d) for d in g.dirs]
    if step == 0:
      for w, c in zip(self.writers, g.configs):
        w.write_hparams(c.to_dict())
    self.progress = metrics_lib.ProgressLogger(
        t.steps,
        every_steps=t.log_every or None,
        every_secs=None if t.log_every else 60.0,
        start_step=step,
        log_fn=functools.partial(logging.log, self.detail),
    )
    self.last = g.per_run(state["metrics"])
    if step < t.steps:
      logging.log(self.detail, "compiling the training step...")
    compile_start = time.perf_counter()
    while step < t.steps:
      state = step_fn(state, *self.feed.step_args())
      step += 1
      if self.clock["segment_start"] is None:
        # Throughput excludes the first step of a segment (compilation).
        jax.block_until_ready(state["step"])
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
    jax.block_until_ready(state["step"])
    return state, step, False

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
      self._evaluate(state, step)
    if do_ckpt:
      # Interval saves copy the state off the device and write in the
      # background while training goes on; the last one is waited for.
      self._save(state, step, wait=step == t.steps)
    for w in self.writers:
      w.flush()
    if do_eval:
      self.progress.reset_timer(step)

  def _report(
      self, state, step, to_terminal: bool, failed_too: bool = False
  ) -> None:
    g, t = self.group, self.t
    m, last = g.per_run(state["metrics"]), self.last
    seen = m.error.count - last.error.count
    if seen.max() <= 0:
      return
    # The interval's means: differences of the running totals.
    losses = (m.loss.total - last.loss.total) / np.maximum(
        m.loss.count - last.loss.count, 1
    )
    errors = (m.error.total - last.error.total) / np.maximum(seen, 1)
    self.last = m
    warm = g.per_run(state["warm"])
    ok = [k for k in range(g.count) if failed_too or k not in self.failed]
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
          t.batch_size * g.count,
          {
              "train_loss": float(np.mean(losses[ok])),
              "train_error": float(np.mean(errors[ok])),
              "learning_rate": rates[ok[0]],
              **({"failed_runs": len(self.failed)} if g.stacked else {}),
          },
      )
      if "images_per_sec" in speed:  # compilation excluded (reset_timer)
        for w in self.writers:
          w.write_scalars(
              step, {"images_per_second": speed["images_per_sec"] / g.count}
          )

  def _evaluate(self, state, step) -> None:
    start = time.perf_counter()
    ev = self.group.per_run(self.feed.evaluate(state["variables"]))
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
    self._write_curves()
    self.clock["eval_seconds"] += time.perf_counter() - start

  def _write_curves(self) -> None:
    """Each run's curves.png, redrawn from its whole log (every segment)."""
    if not self.group.is_main:
      return
    m = self.spec.model.config
    for log, c, d in zip(self.logs, self.group.configs, self.group.dirs):
      title = f"{m.name} depth {m.depth}, seed {c.seed}: {d}"
      if self.failed_at is not None:
        title += f" (diverged at step {self.failed_at})"
      workdir_lib.write_file(
          os.path.join(d, "curves.png"),
          curves.plot_run(
              log.records(),
              title,
              lr_drops=lr_drop_steps(c.train),
              mark=curves.config_mark(c),
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

  def _save(self, state, step, wait: bool) -> None:
    self._check_finite(state)  # never write a checkpoint after a bad step
    if self.group.is_main:
      # Before the save commits: a kill just after it must not lose the
      # run's time (the record of a step that never committed is rewound).
      for log in self.logs:
        log.append(step, "checkpoint", **self._timing(step))
    self.ckpt.save(step, state, wait=wait)
    self.saved_step = step
    if self.group.is_main and self.changes:
      workdir_lib.write_configs(self.group.config_files(), self.resumed_at)
      self.changes = []

  # ------------------------------------------------------------------
  # Non-finite runs

  def _check_finite(self, state) -> None:
    """Records newly diverged runs; raises once every run has diverged."""
    if self.t.on_nonfinite != "stop":
      return
    g = self.group
    bad = g.per_run(state["nonfinite_step"])
    value = g.per_run(state["nonfinite_value"])
    for k in np.flatnonzero(bad >= 0):
      if k not in self.failed:
        self.failed[int(k)] = diverged.describe(
            self.feed,
            self.spec,
            g.configs[k],
            g.one(state, k),
            int(bad[k]),
            int(k),
            float(value[k]),
            g.workdir,
            self.ckpt.latest_step(),  # saves follow a finite check only
        )
        if g.stacked:
          logging.warning(
              "run %d (seed %d): %s", k, g.configs[k].seed, self.failed[k]
          )
    if len(self.failed) == g.count:
      if g.is_main:
        for k, d in enumerate(g.dirs):
          workdir_lib.write_failure(
              d, self.failed[k], g.configs[k].seed, int(bad[k]) + 1
          )
      self._log_divergence(state, int(bad.min()))
      raise TrainingError(
          self.failed[0]
          if not g.stacked
          else f"all {g.count} parallel runs in {g.workdir} "
          f"diverged; first: {self.failed[0]}"
      )

  def _log_divergence(self, state, bad: int) -> None:
    """The training metrics of the finite steps before step ``bad + 1`` in
    metrics.jsonl, and curves.png marked with the divergence: a diverged
    run's curves are the ones a reader wants to see."""
    if not self.writers:  # diverged in an earlier segment
      return
    self.failed_at = bad + 1
    self._report(state, bad, to_terminal=False, failed_too=True)
    self._write_curves()

  # ------------------------------------------------------------------
  # Results

  def _finish(self, state, step) -> dict[str, Any]:
    """Evaluates what is missing and writes every run's results."""
    g = self.group
    self._check_finite(state)
    name = self.feed.eval_split
    ev = g.per_run(self.feed.evaluate(state["variables"]))
    test = (
        ev
        if name == "test" or not self.feed.separate_test
        else (g.per_run(self.feed.evaluate(state["variables"], "test")))
    )
    timing = self._timing(step)
    rate = (
        timing["timed_steps"]
        * self.t.batch_size
        * g.count
        / timing["train_seconds"]
        if timing["train_seconds"]
        else None
    )
    skipped = g.per_run(state["skipped"])
    common = {
        "eval_split": name,
        "steps": step,
        "wall_seconds": time.perf_counter() - self.wall_start,
        "train_seconds": timing["train_seconds"],
        "images_per_second": None if rate is None else rate / g.count,
        "versions": workdir_lib.versions(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
    }
    summary = []
    for k, (c, d) in enumerate(zip(g.configs, g.dirs)):
      entry = {"seed": c.seed, "dir": os.path.basename(d)}
      if k in self.failed:
        summary.append({**entry, "status": "failed", "error": self.failed[k]})
        if g.is_main:
          workdir_lib.write_failure(d, self.failed[k], c.seed, None)
        continue
      result = {
          "test_error": float(test["error"][k]),
          **common,
          "skipped_steps": int(skipped[k]),
          "final_train_error": self.logs[k].last("train", "train_error"),
          "num_params": models.num_params(
              g.one(feeds.fetch(state["variables"]), k)
          ),
          "history": self.logs[k].history(),
          "config": c.to_dict(),
      }
      if name != "test":
        result[f"{name}_error"] = float(ev["error"][k])
      if g.stacked:
        result["parallel"] = {"runs": g.count, "index": k, "workdir": g.workdir}
      if g.is_main:
        workdir_lib.write_json(
            os.path.join(d, workdir_lib.RESULTS_FILE), result
        )
      summary.append(
          {**entry, "status": "ok", "test_error": result["test_error"]}
      )
    out = (
        result
        if not g.stacked
        else runs.write_combined(
            g, summary, step, timing, rate, self.wall_start
        )
    )
    if self.failed:
      raise runs.partly_diverged(g, self.failed)
    return out

  def _log_results(self) -> None:
    """The run's last line: where its results (and curves) are."""
    d = self.group.workdir
    curves_png = os.path.join(d, "curves.png")
    where = (
        f"; each run's results.json and curves.png in {d}/seed<s>"
        if self.group.stacked
        else f" (curves: {curves_png})"
        if os.path.exists(curves_png)
        else ""
    )
    if self.group.is_main:
      logging.log(
          self.detail,
          "results: %s%s",
          os.path.join(d, workdir_lib.RESULTS_FILE),
          where,
      )

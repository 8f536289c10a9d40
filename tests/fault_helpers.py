"""The tiny run of tests/test_faults.py, as a config file and a CLI wrapper.

As a config file (``--config tests/fault_helpers.py``) it gives the run the
in-process twin trains, so a CLI child and the twin compute the same thing.
Run as a script (``python tests/fault_helpers.py FLAGS``) it is
``python -m resflax.main FLAGS`` with a fault injected first, named by
``$RESFLAX_FAULT``:

  kill_after_save:S      SIGKILL once checkpoint S's save call returned
  signal_after_save:S:N  send signal N to itself after that
  kill_before_seal:S     SIGKILL after Orbax committed S, before its checksums
  unquiet                keep Orbax's "Event loop is closed" tracebacks (to
                         show a test would fail without resflax's filter)
"""

import os
import signal

import helpers


def tiny_config(**train_kw):
  """helpers' ResNet-8 on 128 synthetic images, run longer (12 steps) with a
  report and a checkpoint every 2 steps: more moments to inject faults."""
  return helpers.tiny_config(
      **{
          "steps": 12,
          "lr_boundaries": (8,),
          "log_every": 2,
          "checkpoint_every": 2,
          **train_kw,
      }
  )


def get_config(arg=None):
  """The config file's entry point: ``tiny_config``, ``:steps`` optional."""
  return tiny_config(**({"steps": int(arg)} if arg else {}))


def _install(fault: str) -> None:
  # pylint: disable=g-import-not-at-top
  from resflax import logs
  from resflax.training import checkpoint

  name, *args = fault.split(":")
  if name == "unquiet":
    logs.quiet_abandoned_saves = lambda: None
    return
  at = int(args[0])
  if name == "kill_before_seal":
    real_seal = checkpoint.Checkpointer._seal  # pylint: disable=protected-access

    def seal(self, step, path):
      if step == at:
        os.kill(os.getpid(), signal.SIGKILL)
      return real_seal(self, step, path)

    checkpoint.Checkpointer._seal = seal  # pylint: disable=protected-access
    return
  real_save = checkpoint.Checkpointer.save
  signum = signal.SIGKILL if name == "kill_after_save" else int(args[1])

  def save(self, step, state, **kw):
    out = real_save(self, step, state, **kw)
    if step == at:
      os.kill(os.getpid(), signum)
    return out

  checkpoint.Checkpointer.save = save


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  from resflax import main  # pylint: disable=g-import-not-at-top

  if os.environ.get("RESFLAX_FAULT"):
    _install(os.environ["RESFLAX_FAULT"])
  app.run(main.main, flags_parser=main._parse_flags)  # pylint: disable=protected-access

"""Two processes on localhost (2 fake CPU devices each) train like one
process with 4 devices."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import REPO, final_state, tiny_config

from resflax import training

WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1],
                               num_processes=2, process_id=int(sys.argv[2]))
    sys.path.insert(0, os.path.join(sys.argv[4], "tests"))
    from helpers import tiny_config
    from resflax import training
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    result = training.train_and_evaluate(tiny_config(), sys.argv[3])
    print("RESULT", result["test_error"])
""")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_four_devices(tmp_path):
  address = f"localhost:{free_port()}"
  workdir = tmp_path / "multi"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", WORKER, address, str(i), str(workdir), REPO],
          cwd=REPO,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # Only process 0 writes logs and results.
  events = [f for f in os.listdir(workdir) if f.startswith("events.out")]
  assert len(events) == 1
  assert (workdir / "results.json").exists()
  # The same run in this single process on 4 devices.
  assert jax.device_count() == 4
  single = tmp_path / "single"
  # The workers use JAX's default random scheme; conftest changes it.
  jax.config.update("jax_threefry_partitionable", True)
  try:
    result = training.train_and_evaluate(tiny_config(), str(single))
  finally:
    jax.config.update("jax_threefry_partitionable", False)
  multi = json.loads((workdir / "results.json").read_text())
  assert multi["process_count"] == 2 and len(multi["devices"]) == 4
  assert abs(multi["test_error"] - result["test_error"]) < 1e-6
  # Checkpoints saved by the two processes restore here, in one process.
  a = final_state(tiny_config(), str(workdir))
  b = final_state(tiny_config(), str(single))
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5),
      a.variables,
      b.variables,
  )


PREEMPTED_WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1],
                               num_processes=2, process_id=int(sys.argv[2]))
    sys.path.insert(0, os.path.join(sys.argv[4], "tests"))
    from helpers import tiny_config
    from resflax import training
    config = tiny_config(steps=int(sys.argv[5]), log_every=1, eval_every=0,
                         checkpoint_every=0)
    result = training.train_and_evaluate(config, sys.argv[3])
    sys.exit(143 if result.get("interrupted") else 0)
""")


def _start(address, workdir, steps, env):
  return [
      subprocess.Popen(
          [
              sys.executable,
              "-c",
              PREEMPTED_WORKER,
              address,
              str(i),
              str(workdir),
              REPO,
              str(steps),
          ],
          cwd=REPO,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """Only process 1 gets SIGTERM; both save the same step and exit 143, and
  the resumed run ends as an uninterrupted one."""
  import signal  # pylint: disable=g-import-not-at-top

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONUNBUFFERED"] = "1"
  workdir, steps = tmp_path / "run", 60
  procs = _start(f"localhost:{free_port()}", workdir, steps, env)
  for line in procs[0].stderr:  # process 0 reports progress
    if "step 3/" in line:
      break
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=900) for p in procs]
  assert [p.returncode for p in procs] == [143, 143], outs[1][1][-3000:]
  saved = sorted(
      int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()
  )
  assert len(saved) == 1 and 3 <= saved[0] < steps
  assert not (workdir / "results.json").exists()
  procs = _start(f"localhost:{free_port()}", workdir, steps, env)
  outs = [p.communicate(timeout=900) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:]
  twin = tmp_path / "twin"
  procs = _start(f"localhost:{free_port()}", twin, steps, env)
  outs = [p.communicate(timeout=900) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:]
  config = tiny_config(
      steps=steps, log_every=1, eval_every=0, checkpoint_every=0
  )
  jax.config.update("jax_threefry_partitionable", True)
  try:
    a, b = final_state(config, str(workdir)), final_state(config, str(twin))
  finally:
    jax.config.update("jax_threefry_partitionable", False)
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)

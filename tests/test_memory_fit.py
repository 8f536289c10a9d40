"""A step that would not fit the device is refused in one line before it runs.

CPU devices report no memory limit, so the limit is faked here
(``memory_fit.device_bytes_limit``, what a GPU's or TPU's
``memory_stats()['bytes_limit']`` gives).
"""

import pytest
from helpers import engine_config

from resflax import training
from resflax.config import base_config, memory_fit_hint
from resflax.errors import ConfigError
from resflax.training import memory_fit

GIB = 2**30


def test_cpu_step_is_left_as_it_is():
  """No limit to compare with: no ahead-of-time compile, no wrapper."""
  step = object()
  assert memory_fit.device_bytes_limit() is None
  assert memory_fit.checked_step(step, base_config()) is step


def test_hint_names_remat_then_batch_and_runs():
  c = base_config()
  assert memory_fit_hint(c, GIB, 2 * GIB) is None
  line = memory_fit_hint(c, 12 * GIB, 8 * GIB)
  assert "12.0 GiB" in line and "8.0 GiB" in line
  assert "--config.model.remat=True" in line
  c.model.remat = True
  c.train.parallel_runs = 5
  line = memory_fit_hint(c, 12 * GIB, 8 * GIB)
  assert "remat" not in line
  assert "config.train.batch_size=128" in line
  assert "config.train.parallel_runs=5" in line


def test_step_over_device_memory_fails_before_the_first_step(
    tmp_path, monkeypatch
):
  monkeypatch.setattr(memory_fit, "device_bytes_limit", lambda: 1024)
  with pytest.raises(ConfigError) as e:
    training.train_and_evaluate(engine_config(), str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert "set --config.model.remat=True" in message
  assert "device has 0.0 GiB" in message
  assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("runs", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_fitting_step_trains_on_its_one_compiled_program(
    tmp_path, monkeypatch, runs
):
  """The checked step runs the program compiled for the check, every step."""
  made = []

  def record(step, config):
    made.append(memory_fit._CheckedStep(step, config, 64 * GIB))
    return made[-1]

  monkeypatch.setattr(memory_fit, "device_bytes_limit", lambda: 64 * GIB)
  monkeypatch.setattr("resflax.training.trainer.checked_step", record)
  config = engine_config(
      runs=runs, steps=2, lr_boundaries=(1,), eval_every=0, checkpoint_every=0
  )
  training.train_and_evaluate(config, str(tmp_path))
  (checked,) = made
  assert checked.compiled is not None and not checked.fell_back
  if runs == 1:  # jit itself never compiled the step: no second program
    assert checked.step._cache_size() == 0

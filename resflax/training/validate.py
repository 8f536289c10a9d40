"""Config checks run before any data is loaded or anything is compiled."""

import jax
import ml_collections
from absl import logging

from resflax import data as data_lib
from resflax import models
from resflax.errors import ConfigError
from resflax.training import runs
from resflax.training.state import model_config, schedule_scale


def _check_train_keys(t) -> None:
  if t.steps <= 0:
    raise ConfigError(f"config.train.steps={t.steps} must be > 0")
  if t.on_nonfinite not in ("stop", "skip"):
    raise ConfigError(
        f"config.train.on_nonfinite={t.on_nonfinite!r}; choose "
        "'stop' or 'skip'"
    )
  if sorted(t.lr_boundaries) != list(t.lr_boundaries):
    raise ConfigError(
        "config.train.lr_boundaries must be increasing, got "
        f"{tuple(t.lr_boundaries)}"
    )
  for key in (
      "learning_rate",
      "weight_decay",
      "momentum",
      "log_every",
      "eval_every",
      "checkpoint_every",
      "warmup_steps",
      "gradient_modules",
  ):
    if getattr(t, key) < 0:
      raise ConfigError(f"config.train.{key} must be >= 0")
  if t.parallel_runs < 1:
    raise ConfigError("config.train.parallel_runs must be >= 1")
  if t.warmup_window < 1:
    raise ConfigError(
        f"config.train.warmup_window={t.warmup_window} must be >= 1 (the "
        "mini-batches whose running error ends the warm-up; 1 = the first "
        "batch below warmup_until_error)"
    )


def _warn_schedule(t) -> None:
  """Warns when the schedule's boundaries or warm-up fall past the end."""
  scale = schedule_scale(t)
  late = [b for b in t.lr_boundaries if round(b * scale) >= t.steps]
  if late:
    logging.warning(
        "config.train.lr_boundaries %s fall at or after the last step (%d): "
        "the learning rate never decays there. Set --config.train."
        "lr_boundaries or train.scale_schedule=True to scale them.",
        tuple(late),
        t.steps,
    )
  if round(t.warmup_steps * scale) >= t.steps:
    logging.warning(
        "config.train.warmup_steps=%d covers the whole run of %d " "steps",
        t.warmup_steps,
        t.steps,
    )


def validate_config(
    config: ml_collections.ConfigDict, num_devices: int | None = None
) -> models.ModelConfig:
  """Checks every key that could fail later; returns the model config.

  Raises:
    ConfigError: one line naming the key and what is allowed.
  """
  t = config.train
  num_devices = num_devices or jax.device_count()
  _check_train_keys(t)
  if t.batch_size <= 0 or t.batch_size % num_devices:
    raise ConfigError(
        f"config.train.batch_size={t.batch_size} must be a positive multiple "
        f"of the device count ({num_devices})"
    )
  if t.eval_batch_size <= 0:
    raise ConfigError(
        f"config.train.eval_batch_size={t.eval_batch_size} must be positive"
    )
  info = data_lib.source_info(config.data)
  configs = runs.run_configs(config)
  if len(configs) > 1 and info.streams:
    raise ConfigError(
        f"config.train.parallel_runs={t.parallel_runs} needs an in-memory "
        f"dataset; config.data.name={config.data.name!r} is streamed. Train "
        "its runs one after another."
    )
  if len(configs) > 1:
    for c in configs:  # each run alone (overrides applied)
      validate_config(c, num_devices)
  try:
    model_cfg = models.create_model(model_config(config, num_devices)).config
  except ValueError as e:
    raise ConfigError(str(e)) from None
  # Groups may span devices: under jit the grouped statistics of a sharded
  # batch are a reshape of the global batch, and XLA adds the collectives.
  if model_cfg.bn_group_size and t.batch_size % model_cfg.bn_group_size:
    raise ConfigError(
        f"config.model.bn_group_size={model_cfg.bn_group_size} must divide "
        f"config.train.batch_size={t.batch_size}"
    )
  _warn_schedule(t)
  return model_cfg

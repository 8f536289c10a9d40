"""What the command line runs for a config: one training run (or several
runs in one program), a sweep of cases and seeds, or a lesion study,
decided by the config's contents."""

from typing import Any

import ml_collections


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs ``config`` in ``workdir`` and returns its results.

  A config with a ``lesion`` section runs the lesion study
  (``resflax.experiment.lesion_study``); one with ``sweep_cases`` runs every
  case x seed (``resflax.experiment.sweep``); any other trains one network,
  or ``config.train.parallel_runs`` of them in one program
  (``resflax.training``).
  """
  # pylint: disable=g-import-not-at-top
  if "lesion" in config:
    from resflax.experiment import lesion_study

    return lesion_study.run(config, workdir)
  if "sweep_cases" in config:
    from resflax.experiment import sweep

    return sweep.run(config, workdir)
  from resflax import training

  return training.train_and_evaluate(config, workdir)

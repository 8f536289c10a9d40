"""What the command line runs for a config: one training run, a sweep of
cases and seeds, or a lesion study, decided by the config's contents."""

from typing import Any, Dict

import ml_collections

from resflax import train


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Runs ``config`` in ``workdir`` and returns its results.

  A config with a ``lesion`` section runs the lesion study
  (``resflax.lesion_study``); one with ``sweep_cases`` runs every case x seed
  (``resflax.sweep``); any other trains one network.
  """
  if "lesion" in config:
    from resflax.experiment import lesion_study  # pylint: disable=g-import-not-at-top
    return lesion_study.run(config, workdir)
  if "sweep_cases" in config:
    from resflax.experiment import sweep  # pylint: disable=g-import-not-at-top
    return sweep.run(config, workdir)
  return train.train_and_evaluate(config, workdir)

"""Lesion studies (Veit et al. 2016): delete and reorder modules, evaluate.

``resflax.lesion.delete_modules(variables, k)`` and the other operations of
``resflax.lesion.ops``, and ``resflax.lesion.LesionEvaluator`` (of
``resflax.lesion.evaluator``), are importable from here;
``resflax.lesion.paths`` holds the path-length tools and
``resflax.lesion.signal_stats`` the signal statistics.
"""

from resflax.lesion.evaluator import *  # noqa: F401,F403  (LesionEvaluator)
from resflax.lesion.ops import *  # noqa: F401,F403  (the public lesion API)

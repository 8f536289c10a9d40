"""The experiment files: one per paper table or figure, shipped in the wheel.

Each file defines ``get_config(arg)``; run one with
``python -m resflax.main --config experiments/NAME.py[:arg]``. The
checkout's top-level ``experiments/`` is this folder; after a wheel install
``experiments/NAME.py`` names the copy here unless the current directory has
such a file (see ``resflax.config.resolve_experiment``).
"""

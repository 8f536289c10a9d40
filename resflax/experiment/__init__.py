"""Sweeps, tables, figures, paper numbers and the lesion study: what the
experiment files under ``resflax/experiments/`` are run with."""

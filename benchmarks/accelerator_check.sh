#!/usr/bin/env bash
# One-process accelerator check of resflax (devices, ResNet-20/110 steps/s in
# float32 and bfloat16, parallel-runs speed-up, projected ResNet-110 recipe
# time); sized for under 5 minutes on one H100/H200.
#
#   bash benchmarks/accelerator_check.sh [--quick] [--budget 270] [--data PATH]
#
# Run from anywhere; it works in the repo root. When .whl/ holds wheels
# (ml-collections, PyYAML, clu, wrapt: what a bare jax/flax machine lacks;
# clu.metrics holds the train metrics and imports wrapt), they are
# installed with --target into $RESFLAX_SITE (default /tmp/site) and put on
# PYTHONPATH ahead of the repo root (the package is not pip-installed there).
# RESFLAX_WHL_PIP_ARGS adds pip options (e.g. to test the cp312 wheels with
# another Python: "--python-version 3.12 --only-binary=:all:").
# Figures go to stdout and to $OUT/accelerator_check.txt when $OUT is set;
# the last line is ResNet-110 float32 steps/s and the projected recipe time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE="${RESFLAX_SITE:-/tmp/site}"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" ${RESFLAX_WHL_PIP_ARGS:-} .whl/*.whl
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" benchmarks/accelerator_check.py "$@"

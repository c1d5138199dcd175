#!/usr/bin/env bash
# The CUDA paths in one bounded run (<= 8 minutes) on a CUDA machine: SMAX -> PyTorch through DLPack, qmix and
# tad-ppo on smax:3m with --device cuda vs cpu, export, `marlctl serve --device cuda`, a short serving bench.
# Writes bench/results/gpu/gpu_check.{json,md}; exit 0 only when every check passed, 2 where there is no CUDA.
#
#   bash bench/gpu_check.sh [--steps 30000] [--serve-seconds 2] [--out bench/results/gpu]
#
# Python: $PYTHON, else .venv/bin/python (scripts/setup.sh), else python3. It needs a CUDA PyTorch, onnxruntime-gpu
# for the serve check and a CUDA JAX (jax[cuda12]) for SMAX to run on the GPU; where marlctl is not installed in
# that Python, the checkout is put on its path as the `marlctl` package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import marlctl.trainer" 2>/dev/null; then
  shim="$(mktemp -d)"
  ln -s "$PWD" "$shim/marlctl"
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import marlctl.trainer.run, marlctl.envs.smax, marlctl.serving.server" || {
    echo "gpu_check: $PY cannot import marlctl's training and serving parts (above: what is missing);" \
         "run scripts/setup.sh or install the missing packages" >&2; exit 1; }
fi
exec timeout --signal=INT --kill-after=30 480 "$PY" bench/gpu_check.py "$@"

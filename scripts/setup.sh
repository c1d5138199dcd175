#!/usr/bin/env bash
# setup.sh - idempotent setup used by both README commands.
#
# Installs the Debian packages the football engine builds against (and the
# prometheus / kubectl binaries the tests use), creates .venv with Python 3.11,
# builds gfootball==2.10.2 from source, installs torch==2.13.0 (CPU build on
# this machine), JAX + jaxmarl, ONNX, ONNX Runtime (GPU build: it picks CUDA
# only where CUDA loads), gRPC, PettingZoo + MPE2, MLflow, W&B and marlctl itself (editable). Safe to run twice:
# every step checks whether it is already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY_BOOT="${PYTHON:-python3.11}"
command -v "$PY_BOOT" >/dev/null 2>&1 || PY_BOOT=python3
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# ---- Debian packages -------------------------------------------------------
DEB_PKGS=(cmake build-essential libgl1-mesa-dev libsdl2-dev libsdl2-image-dev
  libsdl2-ttf-dev libsdl2-gfx-dev libboost-all-dev libdirectfb-dev libst-dev
  mesa-utils xvfb prometheus prometheus-pushgateway kubectl)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian prometheus package starts a system service on :9090; our tests run their own.
  if printf '%s\n' "${missing[@]}" | grep -qx prometheus; then
    ($SUDO systemctl disable --now prometheus >/dev/null 2>&1 || $SUDO service prometheus stop >/dev/null 2>&1 || true)
  fi
  # Same for the Pushgateway (:9091): the batch-job metrics test runs its own.
  if printf '%s\n' "${missing[@]}" | grep -qx prometheus-pushgateway; then
    ($SUDO systemctl disable --now prometheus-pushgateway >/dev/null 2>&1 \
      || $SUDO service prometheus-pushgateway stop >/dev/null 2>&1 || true)
  fi
else
  say "Debian packages present"
fi

# ---- virtual environment ---------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
export PATH="$VENV/bin:$PATH"   # gfootball's build script calls `python3`
# --no-compile: pip would byte-compile every module of every package at install time (about half of this
# script's time on a fresh clone: 101 s instead of 216 s on 2 cores, Dec 2026); Python compiles and caches
# only the modules that are imported, on first import (a few seconds for what marlctl and its tests load).
PIP=(python -m pip install --disable-pip-version-check -q --no-compile)

stamp="$VENV/.marlctl-setup.sha256"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import marlctl.cli, torch, jax, jaxmarl, gfootball, onnxruntime, ray, pettingzoo, mpe2, mlflow, wandb" 2>/dev/null; then
  say "Python environment up to date ($VENV)"
  exit 0
fi

"${PIP[@]}" --upgrade pip "setuptools>=77,<80" wheel psutil six
python -c "import torch; assert torch.__version__.startswith('2.13.0')" 2>/dev/null || {
  say "installing torch==2.13.0"; "${PIP[@]}" torch==2.13.0; }

if ! python -c "import gfootball.env" 2>/dev/null; then
  say "building gfootball==2.10.2 from source (about 4 minutes on 2 cores)"
  "${PIP[@]}" "gym<0.26"
  "${PIP[@]}" --no-build-isolation gfootball==2.10.2
fi

say "installing marlctl and its dependencies"
"${PIP[@]}" -e "$ROOT[train,grf,dev,pettingzoo,mlflow,wandb]" onnxruntime-gpu
# A CPU onnxruntime pulled in by another package would shadow the GPU build's module.
if python -m pip show onnxruntime >/dev/null 2>&1; then
  python -m pip uninstall -y -q onnxruntime
  "${PIP[@]}" --force-reinstall --no-deps onnxruntime-gpu
fi
echo "$want" > "$stamp"
say "done: $(python -c 'import torch, jax, onnxruntime as o; print(f"torch {torch.__version__}, jax {jax.__version__}, onnxruntime {o.__version__}")')"

#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with pah and everything it uses
# (PyTorch, Ray Tune, Optuna, W&B, submitit, test tools), plus, when run as root on
# Debian/Ubuntu, the Fashion-MNIST package and Chromium (the HTML report's browser test).
# SLURM for the launcher tests comes from .ci/slurm.sh (see docs/slurm.md).
#   ./setup.sh            # then: source .venv/bin/activate
# Knobs: PYTHON=python3.11, PAH_EXTRAS=all (or e.g. "sweep,test"), PAH_NO_APT=1.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
EXTRAS=${PAH_EXTRAS:-all}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
echo "setup: installing pah[$EXTRAS] (PyTorch is large: a few minutes the first time)" >&2
# torchvision must match torch; where a local wheel cache pins them, pip takes those.
# Keep pip's byte-compiling (no --no-compile): where PYTHONDONTWRITEBYTECODE is set (as on our CI
# machines) nothing else writes .pyc files, and every Ray worker would compile torch and Ray from
# source each time it starts (tried: the test suite took 934 s instead of ~650 s).
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored" >&2 || true
.venv/bin/python -c "import pah, torch, torchvision" || { echo "setup: install failed" >&2; exit 1; }

if [ "${PAH_NO_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! dpkg-query -W -f='${Status}' dataset-fashion-mnist 2>/dev/null | grep -q "install ok installed"; then
    echo "setup: apt-get install dataset-fashion-mnist" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends dataset-fashion-mnist >/dev/null; } ||
      echo "setup: warning: could not install dataset-fashion-mnist (Fashion-MNIST runs need PAH_DATA_DIR)" >&2
  fi
  # a headless browser: tests/test_analysis_html.py opens the HTML report in it
  if ! command -v chromium >/dev/null; then
    echo "setup: apt-get install chromium (for the HTML report's browser test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null; } ||
      echo "setup: warning: could not install chromium (the HTML report's browser test skips, or fails under CI)" >&2
  fi
fi
echo "setup: done. Try: .venv/bin/pah train split-digits-pah" >&2

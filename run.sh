#!/usr/bin/env bash
# The main job from a fresh clone, set-up included: `bash run.sh [train.py flags]`.
#
# 1. Uses the active virtual environment, else creates and activates `.venv/` here (reused on later runs).
# 2. Installs `torch==2.13.0` unless a torch is already importable (pip's build for the platform; install a CPU-only
#    build from PyTorch's CPU index, or a CUDA build for a GPU, yourself first to choose), then this project with its test and dev tools: `pip install -e '.[test,dev]'`.
# 3. Runs the embedded-default training (`python examples/train.py`, tiny encoders on generated data, minutes
#    on a CPU), which ends with the test scores and the model saved in `m3d-hier/`. Flags go to train.py.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
    [ -x .venv/bin/python ] || { echo "creating the virtual environment .venv/"; python3 -m venv .venv; }
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi
if ! python -c "import torch" 2>/dev/null; then
    echo "installing torch 2.13.0"
    python -m pip install --quiet torch==2.13.0
fi
echo "installing modeling_m3d and its dependencies (pip install -e '.[test,dev]')"
python -m pip install --quiet -e '.[test,dev]'

exec python examples/train.py "$@"

#!/usr/bin/env bash
# Create .venv (if needed) and install crossfed with its test tools. Idempotent.
#
# torch is installed first and pinned, because the right build depends on the machine:
#   CPU only (default here):   CROSSFED_TORCH="torch==2.13.0"   (this machine has the CPU wheel on disk;
#                              elsewhere add --index-url https://download.pytorch.org/whl/cpu)
#   NVIDIA GPU:                CROSSFED_TORCH="torch==2.13.0"   from PyPI is the CUDA build on Linux x86_64
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's own status survives the filter (pipefail); the filter only drops this machine's index noise
pip_install() { python -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
# shellcheck disable=SC2086
pip_install ${CROSSFED_TORCH:-torch==2.13.0}
pip_install -e ".[dev]"
python -c "import torch, flwr, peft, transformers; import common, clients, server, simulations; \
print(f'crossfed installed: torch {torch.__version__}, flwr {flwr.__version__}, peft {peft.__version__}')"

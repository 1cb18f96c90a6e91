#!/usr/bin/env bash
# Install (if needed), lint, and run the whole test suite. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
python -m pytest -q "$@"

#!/usr/bin/env bash
# Create ./.venv and install copyloop into it. Usage: scripts/setup.sh [extras]  (e.g. "dev,generator")
# torch is installed first, pinned, so that pip takes the CPU build on machines that have it
# instead of pulling a multi-GB CUDA build through transformers/peft.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [[ "$extras" == *generator* ]] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install -q -e "$spec"

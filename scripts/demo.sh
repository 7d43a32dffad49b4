#!/usr/bin/env bash
# Quickstart 1: set up and run the demo on embedded defaults. Extra arguments go to `copyloop demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/copyloop demo "$@"

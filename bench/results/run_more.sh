#!/bin/sh
# Third batch: A/B with the `crc32c` package importable (installed with
# `.venv/bin/pip install --target /tmp/benchpkgs crc32c`, NOT into the venv; PYTHONPATH passes it
# to the API / consumer subprocesses too), a profiled consume run, and bench/regret.py.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
while pgrep -f run_rest.sh >/dev/null; do sleep 2; done
date -u; uptime
PYTHONPATH=/tmp/benchpkgs $PY bench/consume.py --decisions 100000 --events-per-decision 1 --json bench/results/consume_sqlite_crc32c.json > bench/results/consume_sqlite_crc32c.txt 2>&1
date -u; uptime
PYTHONPATH=/tmp/benchpkgs $PY bench/serve.py --workers 1 --rate 300 --duration 15 --connections 16 --no-post --json bench/results/serve_w1_crc32c.json > bench/results/serve_w1_crc32c.txt 2>&1
date -u; uptime
PYTHONPATH=/tmp/benchpkgs $PY bench/consume.py --decisions 60000 --skip-raw --profile --gil --json bench/results/consume_sqlite_crc32c_profile.json > bench/results/consume_sqlite_crc32c_profile.txt 2>&1
date -u; uptime
$PY bench/consume.py --decisions 40000 --skip-raw --profile --gil --json bench/results/consume_sqlite_profile.json > bench/results/consume_sqlite_profile.txt 2>&1
date -u; uptime
$PY bench/regret.py --rounds 20000 --seeds 2 > bench/results/regret_20k.txt 2>&1
date -u; uptime

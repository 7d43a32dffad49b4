#!/bin/sh
# Second batch, run after run_serve.sh (loadgen timing fix: w1 open-loop rerun), then micro and
# consume. One benchmark at a time.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
date -u; uptime
$PY bench/serve.py --workers 1 --rate 1000,300 --duration 15 --connections 16 --no-post --json bench/results/serve_w1_rerun.json > bench/results/serve_w1_rerun.txt 2>&1
date -u; uptime
$PY bench/serve.py --micro-only --json bench/results/micro.json > bench/results/micro.txt 2>&1
date -u; uptime
PYTHONPATH=/tmp/benchpkgs $PY bench/serve.py --micro-only --json bench/results/micro_crc32c.json > bench/results/micro_crc32c.txt 2>&1
date -u; uptime
$PY bench/consume.py --decisions 100000 --events-per-decision 1 --json bench/results/consume_sqlite.json > bench/results/consume_sqlite.txt 2>&1
date -u; uptime
$PY bench/consume.py --decisions 100000 --events-per-decision 1 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --json bench/results/consume_pg.json > bench/results/consume_pg.txt 2>&1
date -u; uptime

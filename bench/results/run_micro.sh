#!/bin/sh
# Fifth batch (after run_last.sh): the micro-benchmarks that test the proposed changes.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
while pgrep -f run_last.sh >/dev/null; do sleep 2; done
date -u; uptime
$PY bench/micro_deps.py > bench/results/micro_deps.txt 2>&1
date -u; uptime
$PY bench/micro_publisher.py --rate 300,1000 --duration 8 > bench/results/micro_publisher.txt 2>&1
date -u; uptime
PYTHONPATH=/tmp/benchpkgs $PY bench/micro_publisher.py --rate 300,1000 --duration 8 > bench/results/micro_publisher_crc32c.txt 2>&1
date -u; uptime
$PY bench/micro_ingest.py --decisions 20000 > bench/results/micro_ingest_sqlite.txt 2>&1
date -u; uptime
$PY bench/micro_ingest.py --decisions 20000 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test > bench/results/micro_ingest_pg.txt 2>&1
date -u; uptime

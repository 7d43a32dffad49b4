#!/bin/sh
# The "after" runs of BENCHMARKS.md §5 (the fixes of §4 in the code), one after the other.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
R=bench/results/after
date -u; uptime
$PY bench/serve.py --workers 1 --rate 1000,300 --duration 15 --connections 16 --profile --gil --micro --json $R/serve_w1.json > $R/serve_w1.txt 2>&1
date -u; uptime
$PY bench/serve.py --workers 2 --rate 1000,300 --duration 15 --connections 16 --no-post --json $R/serve_w2.json > $R/serve_w2.txt 2>&1
date -u; uptime
$PY bench/consume.py --decisions 100000 --events-per-decision 1 --json $R/consume_sqlite.json > $R/consume_sqlite.txt 2>&1
date -u; uptime
$PY bench/consume.py --decisions 100000 --events-per-decision 1 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --json $R/consume_pg.json > $R/consume_pg.txt 2>&1
date -u; uptime

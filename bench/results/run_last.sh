#!/bin/sh
# Fourth batch (after run_more.sh): the consume runs lost to a bench bug (kafka-python 3 has no
# list_consumer_group_offsets), rerun: SQLite and PostgreSQL, without crc32c.
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
while pgrep -f run_more.sh >/dev/null; do sleep 2; done
date -u; uptime
$PY bench/consume.py --decisions 100000 --events-per-decision 1 --json bench/results/consume_sqlite.json > bench/results/consume_sqlite.txt 2>&1
date -u; uptime
$PY bench/consume.py --decisions 100000 --events-per-decision 1 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --json bench/results/consume_pg.json > bench/results/consume_pg.txt 2>&1
date -u; uptime
PYTHONPATH=/tmp/benchpkgs $PY bench/consume.py --decisions 100000 --events-per-decision 1 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --json bench/results/consume_pg_crc32c.json > bench/results/consume_pg_crc32c.txt 2>&1
date -u; uptime

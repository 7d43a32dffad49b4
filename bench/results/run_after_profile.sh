#!/bin/sh
# Where the consumer's time goes after the fixes (py-spy --gil), after run_before_same_run.sh.
cd "$(dirname "$0")/../.."
R=bench/results/after
date -u; uptime
.venv/bin/python bench/consume.py --decisions 60000 --skip-raw --profile --gil --json $R/consume_sqlite_profile.json > $R/consume_sqlite_profile.txt 2>&1
date -u; uptime

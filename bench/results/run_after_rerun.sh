#!/bin/sh
# The after serve runs again, right after run_before_same_run.sh (lower load than run_after.sh).
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
R=bench/results/after
date -u; uptime
$PY bench/serve.py --workers 1 --rate 1000,300 --duration 15 --connections 16 --json $R/serve_w1_rerun.json > $R/serve_w1_rerun.txt 2>&1
date -u; uptime
$PY bench/serve.py --workers 2 --rate 1000,300 --duration 15 --connections 16 --no-post --json $R/serve_w2_rerun.json > $R/serve_w2_rerun.txt 2>&1
date -u; uptime
# 08:20, when the machine went quiet (load ~1): 2 workers once more, and the publisher alone.
$PY bench/serve.py --workers 2 --rate 1000,300 --duration 15 --connections 16 --no-post --json $R/serve_w2_quiet.json > $R/serve_w2_quiet.txt 2>&1
date -u; uptime
$PY bench/micro_publisher.py --rate 300,1000 --duration 8 > $R/micro_publisher.txt 2>&1

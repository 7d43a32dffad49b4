#!/bin/sh
# The serve runs recorded in BENCHMARKS.md, one after the other (never two benchmarks at once).
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
date -u; uptime
$PY bench/serve.py --workers 1 --rate 1000,300 --duration 15 --connections 16 --profile --gil --micro --json bench/results/serve_w1.json > bench/results/serve_w1.txt 2>&1
date -u; uptime
$PY bench/serve.py --workers 2 --rate 1000,300 --duration 15 --connections 16 --profile --gil --json bench/results/serve_w2.json > bench/results/serve_w2.txt 2>&1
date -u; uptime
$PY bench/serve.py --workers 1 --kafka-down --rate 300 --duration 15 --connections 16 --no-post --json bench/results/serve_w1_kafka_down.json > bench/results/serve_w1_kafka_down.txt 2>&1
date -u; uptime

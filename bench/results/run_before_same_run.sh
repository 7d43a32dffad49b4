#!/bin/sh
# The same benches on the code before the fixes (commit ec7c2a1, exported with git archive) and
# without crc32c (a shim that fails to import), right after run_after.sh: a same-load A/B of the
# serving path (the consumer's before/after is compared by CPU per message, which load moves less).
cd "$(dirname "$0")/../.."
PY=$PWD/.venv/bin/python
R=$PWD/bench/results/before_same_run
rm -rf /tmp/copyloop_before /tmp/nocrc && mkdir -p /tmp/copyloop_before /tmp/nocrc
git archive ec7c2a1 | tar -x -C /tmp/copyloop_before
echo 'raise ImportError("crc32c hidden for the before runs")' > /tmp/nocrc/crc32c.py
cd /tmp/copyloop_before
export PYTHONPATH=/tmp/nocrc:/tmp/copyloop_before
date -u; uptime
$PY bench/serve.py --workers 1 --rate 1000,300 --duration 15 --connections 16 --json $R/serve_w1.json > $R/serve_w1.txt 2>&1
date -u; uptime

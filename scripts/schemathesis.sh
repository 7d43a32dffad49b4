#!/usr/bin/env bash
# Fuzz the HTTP API from its own OpenAPI document with schemathesis, once per role's key and with
# no key / an unknown key: a real `copyloop serve` on a fresh SQLite ledger (migrated, the sample
# catalog and its rules variants; no broker: the decision log keeps what it cannot ship).
# A one-off QA run, not part of CI or of the project's dependencies: schemathesis is pip-installed
# into the venv when missing. Exit status: non-zero if any role's run found a failure.
#   scripts/schemathesis.sh [MAX_EXAMPLES_PER_OPERATION (default 50)] [extra schemathesis args…]
# PYTHON (default .venv/bin/python) and PORT (default 18765) may be set; reports go to
# $REPORT_DIR (default: a temporary directory, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-18765}
examples=${1:-50}
shift || true
"$PYTHON" -c "import schemathesis" 2>/dev/null || "$PYTHON" -m pip install -q schemathesis
st="$(cd "$(dirname "$PYTHON")" && pwd)/schemathesis"
base="http://127.0.0.1:$PORT"
if curl -fs "$base/healthz" >/dev/null 2>&1; then
  echo "something already answers on port $PORT; set PORT" >&2
  exit 1
fi

work=$(mktemp -d)
REPORT_DIR=${REPORT_DIR:-$work/reports}
export COPYLOOP_DATABASE_URL="sqlite:///$work/ledger.db" COPYLOOP_SPOOL_DIR="$work/spool"
export COPYLOOP_KAFKA_BOOTSTRAP=127.0.0.1:9 COPYLOOP_API_WORKERS=1 COPYLOOP_API_PORT="$PORT"
# The fuzzer should reach the routes, not the storefront key's rate limit (its 429 is tested).
export COPYLOOP_STOREFRONT_RATE_PER_S=100000 COPYLOOP_STOREFRONT_BURST=100000
cl() { "$PYTHON" -m copyloop "$@"; }

cl db upgrade >/dev/null
cl catalog import core/data/sample_catalog.jsonl --generate >/dev/null
declare -A keys=([none]="" [bad]="cl_not_a_key")
for role in admin serve events storefront analyst; do
  keys[$role]=$(cl keys create --role "$role" --label schemathesis | tail -n 1)
done

"$PYTHON" -m copyloop serve >"$work/api.log" 2>&1 &
api=$!
trap 'kill "$api" 2>/dev/null; wait "$api" 2>/dev/null || true' EXIT
for _ in $(seq 150); do
  curl -fs "$base/healthz" >/dev/null && break
  sleep 0.2
done
curl -fs "$base/healthz" >/dev/null || { cat "$work/api.log" >&2; exit 1; }

# Half the ids the fuzzer sends are real ones (products, their variants, decisions served just
# now), so the operations get past 404 to their own logic.
"$PYTHON" - "$base" "${keys[serve]}" "${keys[analyst]}" >"$work/schemathesis.toml" <<'PY'
import json, sys, urllib.request
from core.catalog import SAMPLE_CATALOG

base, serve, analyst = sys.argv[1:]
def call(path, key, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(base + path, data, headers)) as r:
        return json.load(r)
products = [json.loads(line)["product_id"] for line in SAMPLE_CATALOG.open()][:5]
decisions = [call("/v1/decisions", serve, {"product_id": p})["decision_id"] for p in products]
variants = [v["variant_id"] for p in products for v in call(f"/v1/products/{p}", analyst)["variants"]]
for name, values in (("products", products), ("variants", variants), ("decisions", decisions)):
    print(f"[dictionaries.{name}]\nvalues = {json.dumps(values)}")
print("[parameters]")
for key, name in (("path.product_id", "products"), ("body.product_id", "products"),
                  ("path.variant_id", "variants"), ("path.decision_id", "decisions"),
                  ("body.decision_id", "decisions")):
    print(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}')
PY

status=0
for role in admin serve events storefront analyst none bad; do
  auth=()
  [ -n "${keys[$role]}" ] && auth=(-H "Authorization: Bearer ${keys[$role]}")
  echo "== role: $role"
  # from $work: schemathesis keeps its replay files in ./.schemathesis
  (cd "$work" && "$st" --config-file "$work/schemathesis.toml" run "$base/openapi.json" "${auth[@]}" --max-examples "$examples" --seed 1 \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --workers 1 --no-color --generation-database none \
    --report ndjson --report-ndjson-path "$REPORT_DIR/$role.ndjson" "$@") \
    || status=1
done
if grep -q 'Traceback\|ERROR' "$work/api.log"; then
  echo "server errors in $work/api.log" >&2
  status=1
fi
echo "reports: $REPORT_DIR; API log: $work/api.log"
exit "$status"

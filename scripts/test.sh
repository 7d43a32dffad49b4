#!/usr/bin/env bash
# Quickstart 2: set up and run the test suite. On SQLite always; on PostgreSQL as well when one
# answers on 127.0.0.1:5432 (or COPYLOOP_TEST_DATABASE_URL is set). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,generator
# Headless Chromium for tests/browser (the report page); installed only when missing.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
      echo "could not install chromium: tests/browser will be skipped" >&2
  fi
fi
if [ -z "${COPYLOOP_TEST_DATABASE_URL:-}" ] && \
   .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null; then
  export COPYLOOP_TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/test"
fi
echo "PostgreSQL for tests: ${COPYLOOP_TEST_DATABASE_URL:-none (SQLite only)}"
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$code"

"""The two one-command entry points, run as a user runs them: `copyloop up` starts every part
and stops them all on Ctrl-C; `copyloop demo --json` closes the loop and its ledger matches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from core.broker import free_port
from tests.processes import descendants, is_live

pytestmark = pytest.mark.timeout(600)


def test_up_starts_everything_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    port, broker_port, shop_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "COPYLOOP_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}",
        "COPYLOOP_EMBEDDED_BROKER_PORT": str(broker_port),
        "COPYLOOP_SPOOL_DIR": str(tmp_path / "spool"),
    }
    env.pop("COPYLOOP_KAFKA_BOOTSTRAP", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "copyloop", "up", "--port", str(port)]
        + ["--shop-port", str(shop_port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        health: dict[str, object] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                if health.get("model_version"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert health.get("model_version"), health  # the consumer saved a first model
        # The demo shop: the snippet from this API, a publishable key, the catalog's copy.
        page = httpx.get(f"http://127.0.0.1:{shop_port}/", timeout=5).text
        assert f'src="http://127.0.0.1:{port}/v1/client.js"' in page
        assert 'data-copyloop-key="cl_' in page
        shown = httpx.get(f"http://127.0.0.1:{shop_port}/report", timeout=30).json()
        assert shown["bandit"]["not_activated"] == 0
        children = descendants(proc.pid)
        for part in ("tansu", "copyloop serve", "copyloop consume", "copyloop scheduler"):
            assert descendants(proc.pid, part), part
        # The API at the supervisor's CPU priority, the consumer and the scheduler below it.
        base = psutil.Process(proc.pid).nice()
        background = min(19, base + 10)
        for part, nice in (("serve", base), ("consume", background), ("scheduler", background)):
            assert {p.nice() for p in descendants(proc.pid, f"copyloop {part}")} == {nice}, part
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not [c for c in children if is_live(c)]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_json_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYLOOP_")}
    out = subprocess.run(
        [sys.executable, "-m", "copyloop", "demo", "--impressions", "2500", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["impressions"] == 2500
    assert summary["ledger_matches_sent"] is True
    arms = summary["arms"]
    assert arms["bandit"]["impressions"] + arms["control"]["impressions"] == 2500
    assert (tmp_path / summary["report_html"]).is_file()

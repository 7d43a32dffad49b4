"""Helpers shared by the benchmarks: a prepared ledger, CPU accounting, load average."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

import psutil


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of `pid` and all its descendants (0 if gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


@dataclass
class CpuMeter:
    """CPU seconds used by a set of process trees between `start()` and `stop()`."""

    pids: dict[str, int]

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        out = {f"cpu_{k}": round(cpu_seconds(p) - self._c0[k], 2) for k, p in self.pids.items()}
        out["wall_s"] = round(wall, 2)
        return out


def prepare_ledger(settings, with_snapshot: bool = True) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Migrate, import the sample catalog, generate variants (rules), save an untrained model
    snapshot when none exists, and create keys. Returns {role: key}."""
    from rich.console import Console

    from bandit import Policy
    from copyloop.demo import _prepare
    from core.ledger import make_engine, make_sessionmaker, snapshots
    from core.migrations import upgrade

    upgrade(settings.database_url)
    keys = _prepare(settings, Console(stderr=True, quiet=True))
    if with_snapshot:
        engine = make_engine(settings.database_url)
        try:
            sessions = make_sessionmaker(engine)
            if snapshots.latest_version(sessions) is None:
                policy = Policy(settings.vw_args)
                snapshots.save(sessions, policy.save(), 0, settings.vw_args, settings.snapshot_dir)
                policy.close()
        finally:
            engine.dispose()
    return keys


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"

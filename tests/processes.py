"""Finding the processes a test started through another one (`copyloop up`, uvicorn's
supervisor) without racing their exits."""

from __future__ import annotations

import psutil


def is_live(p: psutil.Process) -> bool:
    """Whether `p` still runs (a zombie not yet reaped does not), asked without racing its exit."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(pid: int, part: str = "") -> list[psutil.Process]:
    """The live descendants of `pid` whose command line holds `part`. One that exits while they
    are listed is left out rather than raising."""
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if is_live(p) and part in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found

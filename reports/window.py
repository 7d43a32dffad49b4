"""The report's time window as analysts write it, read the same way by the HTTP API and the CLI:
each bound ISO-8601 (naive means UTC), epoch seconds, or epoch milliseconds; `since` before
`until` (decisions with `since <= ts < until`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

#: Epoch numbers at or above this are milliseconds (1e11 s would be the year 5138).
MS_THRESHOLD = 1e11


class BadWindow(ValueError):
    """A bound that cannot be read, or bounds in the wrong order; `field` names the bound."""

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.field, self.reason = field, reason


def parse_bound(value: str | None, name: str) -> float | None:
    """Epoch seconds from ISO-8601 or an epoch number (seconds, or milliseconds when ≥ 1e11);
    None for no bound.

    >>> parse_bound("2026-01-02T03:04:05Z", "since"), parse_bound("1767323045", "since")
    (1767323045.0, 1767323045.0)
    >>> parse_bound("1767323045000", "until")
    1767323045.0
    """
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadWindow(
                name,
                "not ISO-8601 or an epoch number",
                f"{name}: expected ISO-8601 or epoch seconds, got {value!r}",
            ) from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(number):
        raise BadWindow(name, "not a finite number", f"{name}: must be finite, got {value!r}")
    return number / 1000.0 if abs(number) >= MS_THRESHOLD else number


def parse_window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """Both bounds, refused when `until` is not after `since` (an empty window is a typo, not a
    report of zeros).

    >>> parse_window("2026-01-02", None)
    (1767312000.0, None)
    >>> try:
    ...     parse_window("2026-01-02", "2026-01-01")
    ... except BadWindow as bad:
    ...     print(bad.field, "|", bad)
    until | until: must be after since (2026-01-02 00:00:00 UTC), got 2026-01-01
    """
    lo, hi = parse_bound(since, "since"), parse_bound(until, "until")
    if lo is not None and hi is not None and hi <= lo:
        start = datetime.fromtimestamp(lo, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise BadWindow(
            "until", "not after since", f"until: must be after since ({start}), got {until}"
        )
    return lo, hi

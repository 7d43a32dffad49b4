"""The report's "over time" section: buckets sized from the window's span, and per bucket each
arm's outcomes, the cumulative lift and the traffic allocation.

Hourly buckets drew one dot for a ten-minute run and 700 for a month; `pick_bucket` takes the
smallest of `BUCKETS` that cuts the span into at most `MAX_BUCKETS` (minutes for a short run,
hours for a few days, days for weeks).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reports.sums import Sums

#: (seconds, name), smallest first.
BUCKETS = (
    (60.0, "minute"),
    (300.0, "5 minutes"),
    (900.0, "15 minutes"),
    (3600.0, "hour"),
    (86400.0, "day"),
    (7 * 86400.0, "week"),
)
MAX_BUCKETS = 96
ARMS = ("bandit", "control", "fallback")
RANDOMIZED = ("bandit", "control")


@dataclass(frozen=True, slots=True)
class Bucket:
    seconds: float
    name: str

    def label(self, start: float) -> str:
        """A bucket's start as an axis label, as fine as the bucket."""
        fmt = "%m-%d %H:%M" if self.seconds < 3600 else "%m-%d %H:00"
        if self.seconds >= 86400:
            fmt = "%Y-%m-%d"
        return datetime.fromtimestamp(start, UTC).strftime(fmt)


def pick_bucket(span_s: float) -> Bucket:
    """The smallest bucket that cuts `span_s` seconds into at most `MAX_BUCKETS`.

    >>> [pick_bucket(s).name for s in (600, 7200, 36 * 3600, 4 * 86400, 10 * 86400, 1e9)]
    ['minute', '5 minutes', 'hour', 'hour', 'day', 'week']
    """
    for seconds, name in BUCKETS:
        if math.ceil(span_s / seconds) <= MAX_BUCKETS:
            return Bucket(seconds, name)
    return Bucket(*BUCKETS[-1])


def timeseries(
    ts_rows: Sequence[Any],
    meta: dict[str, tuple[str, str, str]],
    origin: float,
    bucket: Bucket,
    lift: Callable[[dict[str, Sums]], dict[str, Any]],
) -> dict[str, Any]:
    """Per bucket: each arm's impressions and outcomes, the cumulative lift (`lift` of the
    cumulative sums, so it carries the report's interval kind) of the bandit over control up
    to the bucket's end, and the traffic allocation (control share; the bandit arm's
    impressions by style). `ts_rows` are `queries.ReportReader.timeseries` rows."""
    buckets: dict[int, dict[str, Sums]] = defaultdict(lambda: defaultdict(Sums))
    styles: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for k, policy, variant_id, *rest in ts_rows:
        part = Sums.of(rest, 0)
        buckets[int(k)][policy] += part
        if policy == "bandit":
            style = meta[variant_id][0] if variant_id in meta else "(unknown)"
            styles[int(k)][style] += part.n
    points = []
    cumulative: dict[str, Sums] = defaultdict(Sums)
    for k in range(min(buckets, default=0), max(buckets, default=-1) + 1):
        by_arm = buckets.get(k, {})
        for arm, part in by_arm.items():
            cumulative[arm] += part
        randomized = sum(by_arm.get(a, Sums()).n for a in RANDOMIZED)
        bandit_n = by_arm.get("bandit", Sums()).n
        start = origin + k * bucket.seconds
        points.append(
            {
                "start": start,
                "start_iso": datetime.fromtimestamp(start, UTC).isoformat(),
                "arms": {arm: by_arm.get(arm, Sums()).metrics() for arm in ARMS},
                "cumulative": {arm: cumulative[arm].metrics() for arm in RANDOMIZED},
                "cumulative_lift": lift(cumulative),
                "control_share": (
                    by_arm.get("control", Sums()).n / randomized if randomized else None
                ),
                "bandit_by_style": {
                    style: n / bandit_n for style, n in sorted(styles.get(k, {}).items())
                },
            }
        )
    return {"bucket": bucket.name, "bucket_s": bucket.seconds, "points": points}

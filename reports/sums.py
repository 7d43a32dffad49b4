"""Outcome sums of a set of decisions: the unit every report section adds up and turns into
metrics (`metrics`) or per-metric sufficient statistics (`stats`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reports.estimators import ArmStats

#: Report metric → the outcome column it is the mean of.
METRICS = {"ctr": "clicked", "cvr": "purchased", "revenue_per_impression": "revenue"}


@dataclass(frozen=True, slots=True)
class Sums:
    """Outcome sums of a set of decisions: n, decisions with a click, with a purchase, revenue
    and the sum of each decision's revenue squared."""

    n: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0

    @classmethod
    def of(cls, row: Sequence[Any], at: int) -> Sums:
        """From five consecutive columns of a query row, starting at `at` (NULL sums are 0)."""
        n, c, p, r, r2 = row[at : at + 5]
        return cls(int(n), int(c or 0), int(p or 0), float(r or 0), float(r2 or 0))

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.n + other.n,
            self.clicks + other.clicks,
            self.purchases + other.purchases,
            self.revenue + other.revenue,
            self.revenue_sq + other.revenue_sq,
        )

    def __sub__(self, other: Sums) -> Sums:
        """The sums of a set less those of a subset of it."""
        return Sums(
            self.n - other.n,
            self.clicks - other.clicks,
            self.purchases - other.purchases,
            self.revenue - other.revenue,
            self.revenue_sq - other.revenue_sq,
        )

    def metrics(self) -> dict[str, Any]:
        n = self.n
        return {
            "impressions": n,
            "clicks": self.clicks,
            "purchases": self.purchases,
            "revenue": round(self.revenue, 6),
            "ctr": self.clicks / n if n else 0.0,
            "cvr": self.purchases / n if n else 0.0,
            "revenue_per_impression": self.revenue / n if n else 0.0,
        }

    def stats(self) -> dict[str, ArmStats]:
        """Per metric: n, Σy, Σy² and the units with a nonzero outcome (revenue: purchases)."""
        return {
            "ctr": ArmStats(self.n, self.clicks, self.clicks),
            "cvr": ArmStats(self.n, self.purchases, self.purchases),
            "revenue_per_impression": ArmStats(
                self.n, self.revenue, self.revenue_sq, nonzero=self.purchases
            ),
        }

"""Reports for analysts: the uplift of the bandit over the control holdout, breakdowns and
off-policy estimates. Aggregations are SQL (`uplift`), estimators pure functions (`estimators`)."""

from copyloop.reports.uplift import to_csv, uplift_report

__all__ = ["to_csv", "uplift_report"]

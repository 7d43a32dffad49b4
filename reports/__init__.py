"""Reports for analysts: the uplift of the bandit over the control holdout, breakdowns, time
series and off-policy estimates.

`queries` (the SQL), `uplift` (assembles the report dict), `estimators` (pure estimators with
frozen results), `ope` (the counterfactual panel), `greedy` (scores logged contexts with the
newest model), `csv_format` / `html` (rendering), `synthetic` (logs with known truth, for tests
and benchmarks).
"""

from reports.uplift import to_csv, uplift_report

__all__ = ["to_csv", "uplift_report"]

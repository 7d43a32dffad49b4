"""Reports for analysts: the uplift of the bandit over the control holdout, breakdowns, time
series and off-policy estimates.

`queries` (the SQL), `uplift` (assembles the report dict, one section per key), `estimators`
(pure estimators with frozen results), `intervals` (fixed, sequential, Fieller and score
intervals), `cuped` + `pre_period` (CUPED and its covariate), `sums`, `breakdowns`,
`timeseries`, `ope` (the counterfactual panel), `reward_model` (DR's cross-fitted model),
`greedy` (scores logged contexts with a model snapshot, held-out decisions only), `apprentice`
(what switching from apprentice mode to live would earn), `shadow` (shadow explorers' values),
`features` (feature weights and each group's worth), `csv_format` /
`html` (rendering), `synthetic` and `simulate` (logs and experiments with known truth, for tests
and benchmarks).
"""

from reports.uplift import finite, to_csv, uplift_report

__all__ = ["finite", "to_csv", "uplift_report"]

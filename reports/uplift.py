"""The uplift report: bandit vs the randomized control holdout, analyst statistics (CUPED,
sequential intervals), breakdowns, time series and the counterfactual panel, aggregated in SQL
(`queries`) and assembled here as a JSON-ready dict, one section per key.

A decision's outcome counts the events whose `ts` falls in `[ts − clock_skew_s, ts +
reward_window_s]` (CONTRACT.md), whether or not its window has closed yet, so the counts always
equal what producers sent for the decisions in range. Per arm: `impressions`, `clicks` and
`purchases` (decisions with at least one), `revenue` (sum of purchase values), `ctr`, `cvr`,
`revenue_per_impression`, and `not_activated` (deferred decisions closed without an activation:
never impressions, never learned from) beside `awaiting_activation` (deferred, still open).
Only activated decisions are impressions. `uplift.<metric>` compares the `bandit` arm with
`control`: the headline comes from the randomized holdout only, with its CUPED twin in
`uplift.<metric>.cuped`
(`pre_period`). `ci` picks the interval kind of every lift in the report: `fixed` (read once) or
`sequential` (always valid: safe to watch after every batch; `intervals`).

`apprentice` estimates what switching from apprentice mode to live would earn (`apprentice`);
`ope.shadow` each shadow explorer's value beside the live policy's (`shadow`); `features` the
model's feature weights and each feature group's worth (`features`).
Sections are built by small functions and added to the dict by name, so a new section is one
more builder and one more key; `html.SECTIONS` and
`csv_format.WRITERS` render them in order. Nothing in the dict is NaN (`finite`).
"""

from __future__ import annotations

import functools
import gc
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.orm import Session, sessionmaker

import reports.breakdowns as breakdowns
import reports.pre_period as pre_period
from core.ledger import modes
from core.settings import Settings
from reports.apprentice import apprentice_block
from reports.csv_format import to_csv
from reports.cuped import Cuped
from reports.estimators import sample_ratio, uplift
from reports.features import feature_report
from reports.intervals import SEQUENTIAL_TARGET_N, critical, mixture_scale
from reports.ope import counterfactual_panel, to_rows
from reports.queries import Filters, ReportReader, report_reader
from reports.rollup_reader import RollupReader
from reports.rollups import HOUR, state, usable
from reports.shadow import shadow_block
from reports.sums import METRICS, Sums
from reports.timeseries import pick_bucket, timeseries

ARMS = ("bandit", "control", "fallback")
RANDOMIZED = ("bandit", "control")
#: Decisions the counterfactual panel scores at most (the most recent ones in the window).
DEFAULT_OPE_SAMPLE = 10_000
#: Decisions (the most recent in the window) whose context JSON the breakdown expands at most.
DEFAULT_CONTEXT_SAMPLE = 200_000

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["DEFAULT_OPE_SAMPLE", "finite", "to_csv", "uplift_report"]


class Lift:
    """The lift of bandit over control for every metric, with one interval kind."""

    def __init__(self, ci: str, target_n: float) -> None:
        critical(ci, 1.0, target_n)  # validates `ci` (ValueError naming the kinds)
        self.ci, self.target_n = ci, target_n

    def __call__(self, by_arm: dict[str, Sums]) -> dict[str, Any]:
        t, c = by_arm.get("bandit", Sums()).stats(), by_arm.get("control", Sums()).stats()
        return {m: uplift(t[m], c[m], self.ci, self.target_n).as_dict() for m in METRICS}

    def describe(self) -> dict[str, Any]:
        if self.ci == "fixed":
            return {
                "kind": "fixed",
                "method": "95% normal intervals, valid when the report is read once at a sample "
                "size fixed in advance; relative lift by Fieller's theorem, which inverts the "
                "same Welch z-test the p-value comes from, so interval and p-value agree",
            }
        return {
            "kind": "sequential",
            "method": "95% always-valid confidence sequences (normal mixture, Howard et al. "
            "2021; asymptotic, Waudby-Smith et al. 2024): the chance that any look ever "
            "excludes the truth is at most 5%, so they may be watched after every batch; "
            "relative lift by Fieller's inversion of the same boundary; always-valid p-values",
            "alpha": 0.05,
            "target_n": self.target_n,
            "rho": mixture_scale(self.target_n),
        }


def _cyclic_gc_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run `fn` with CPython's cyclic garbage collector paused (refcounting still frees
    everything as usual), restoring it after.

    Why: the report holds its samples (10,000 decisions with their JSON, their value objects,
    VW's inputs) while it builds them, which promotes enough objects to trigger one or two full
    collections per report, each walking the whole heap: 0.08-0.18 s of a 1-1.5 s report at
    1M decisions (BENCHMARKS.md "Report"). The report makes no reference cycles worth
    collecting before it returns; whatever it leaves is collected after. Concurrent reports:
    the first to pause restores the collector, so it is never left paused."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


@_cyclic_gc_paused
def uplift_report(
    sessions: sessionmaker[Session],
    settings: Settings,
    since: float | None = None,
    until: float | None = None,
    product_id: str | None = None,
    *,
    ope_sample: int = DEFAULT_OPE_SAMPLE,
    context_sample: int = DEFAULT_CONTEXT_SAMPLE,
    greedy: bool = True,
    ci: str = "fixed",
    sequential_target_n: float = SEQUENTIAL_TARGET_N,
    feature_sample: int = 0,
    rollups: bool = True,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring for the semantics).

    `ope_sample` bounds the decisions the counterfactual panel reads (0 leaves it out);
    `context_sample` the decisions (the most recent) the per-context breakdown expands (0
    leaves it out); `greedy=False` skips scoring the panel's sample with a model snapshot;
    `ci` is `fixed` or `sequential` (ValueError otherwise); `sequential_target_n` is where the
    sequential boundary is tightest, in randomized decisions; `feature_sample` bounds the closed
    decisions the feature section reads (it retrains a model per feature group, seconds, so it
    is left out, 0, unless asked for: the HTML page and `copyloop report` ask for 2,000);
    `rollups=False` scans every decision
    instead of reading the rollups (the same numbers: tests compare the two).
    """
    lift = Lift(ci, sequential_target_n)  # ValueError for an unknown `ci`, before any query
    f = Filters(since, until, product_id)
    with report_reader(sessions, settings, f) as q:
        lo, hi = q.ts_range()
        bucket = pick_bucket(_span(f, lo, hi))
        q, source = _reader(q, settings, bucket.seconds, rollups, ope_sample)
        cube_rows = q.cube()
        origin = math.floor(lo / bucket.seconds) * bucket.seconds if lo is not None else 0.0
        ts_rows = q.timeseries(origin, bucket.seconds) if lo is not None else []
        meta = q.variant_meta([r[1] for r in cube_rows] + [r[2] for r in ts_rows])
        cutoff = None
        if context_sample > 0 and not source["used"]:
            cutoff = q.context_cutoff(context_sample)
        ctx_rows = q.contexts(cutoff) if context_sample > 0 else []
        raw = q.recent_logged(ope_sample) if ope_sample > 0 else []
        unseen = q.activation_counts()
        shadowed = q.shadow_logged(ope_sample) if ope_sample > 0 else []
        cuped_inputs = _cuped_inputs(q, f, lo, hi, cube_rows)

    by_arm: dict[str, Sums] = defaultdict(Sums)
    for r in cube_rows:
        by_arm[r[2]] += Sums.of(r, 3)
    arms = {arm: by_arm[arm].metrics() for arm in ARMS}
    for arm, counts in arms.items():
        counts["not_activated"], counts["awaiting_activation"] = unseen.get(arm, (0, 0))
    randomized = sum(by_arm[a].n for a in RANDOMIZED)
    pp, analysis, pre = cuped_inputs
    headline = lift(by_arm)
    cuped = pre_period.cuped_by_metric(analysis, pre, ci, sequential_target_n) if pp else None
    for metric, u in headline.items():
        u["cuped"] = cuped[metric] if cuped else asdict(Cuped.unavailable("no decisions in range"))
    report = {
        "generated_at": time.time(),
        "filters": {"since": since, "until": until, "product_id": product_id},
        "settings": {
            "reward_window_s": settings.reward_window_s,
            "clock_skew_s": settings.clock_skew_s,
            "holdout": settings.holdout,
        },
        "ci": ci,
        "arms": arms,
        "uplift": headline,
        "headline_note": "bandit arm (every bandit-served decision) against the control holdout "
        "(the original copy, served uniformly at random): a randomized comparison; fallback "
        "decisions are in neither arm",
        "interval_method": lift.describe()["method"],
        "intervals": lift.describe(),
        "cuped": pre_period.scope(pp, pre),
        "srm": asdict(
            sample_ratio(
                arms["control"]["impressions"], arms["bandit"]["impressions"], settings.holdout
            )
        ),
        "products": breakdowns.products(cube_rows, lift),
        "variants": breakdowns.variants(cube_rows, meta),
        "variants_note": "per-variant rates inside the bandit are biased by adaptive allocation; "
        "the snips rates beside them weight each served decision by 1 / its logged probability "
        "(bandit and control decisions), estimating the rate had every page view of the "
        "product shown that variant; their 95% score intervals hold on sparse metrics; "
        f"low_ess: Kish effective sample size below {breakdowns.LOW_ESS:g}, too thin to read",
        "low_ess_threshold": breakdowns.LOW_ESS,
        "generator_versions": breakdowns.generator_versions(cube_rows, meta),
        "contexts": breakdowns.contexts(ctx_rows, lift),
        "contexts_scope": breakdowns.context_scope(cutoff, context_sample),
        "rollups": source,
        "timeseries": timeseries(ts_rows, meta, origin, bucket, lift),
        "ope": {
            **_ope(sessions, raw, randomized, ope_sample, greedy, meta),
            "shadow": shadow_block(
                shadowed,
                settings.shadow_explorers,
                ope_sample,
                groups={v: m[0] for v, m in meta.items() if m[0]},
            ),
        },
        "apprentice": apprentice_block(
            raw,
            modes.history(sessions),
            modes.Mode(settings.mode, settings.apprentice_explore),
            settings.holdout,
            groups={v: m[0] for v, m in meta.items() if m[0]},
        ),
        "features": (
            feature_report(sessions, settings, f, feature_sample)
            if feature_sample > 0
            else {
                "features": [],
                "namespaces": [],
                "groups": [],
                "note": "Left out of this report (it retrains a model per feature group): ask "
                "with feature_sample=N, or GET /v1/reports/features",
            }
        ),
    }
    clean: dict[str, Any] = finite(report)
    return clean


def _reader(
    q: ReportReader, settings: Settings, bucket_s: float, rollups: bool, ope_sample: int
) -> tuple[ReportReader, dict[str, Any]]:
    """The reader the report sums with, `report_outcomes` filled for it, and the report's
    `rollups` section: whether the rollups were read, and why not."""
    why = usable(state(q.conn), settings) if rollups else "full scan asked for"
    if why is None and bucket_s < HOUR:
        why = "a window of a day or less is read from the decisions (minute buckets)"
    if why is not None:
        q.fill_outcomes(q.f)
        return q, {"used": False, "note": why}
    r = RollupReader(q.conn, settings, q.f)
    if ope_sample > 0:  # outcomes of the counterfactual panel's sample only
        cutoff = r.recent_cutoff(ope_sample)
        since = q.f.since if cutoff is None else max(cutoff, q.f.since or cutoff)
        r.fill_outcomes(Filters(since, q.f.until, q.f.product_id))
    note = "closed decisions of whole hours from the rollups; the rest read directly"
    return r, {"used": True, "note": note}


def _cuped_inputs(
    q: ReportReader,
    f: Filters,
    lo: float | None,
    hi: float | None,
    cube_rows: Sequence[Any],
) -> tuple[pre_period.PrePeriod | None, list[tuple[str | None, str, Sums]], dict[str, Sums]]:
    """The pre-period, the analysed decisions' (group, policy, sums) and the pre-period's sums
    per product (`pre_period` says which decisions each holds)."""
    pp = pre_period.choose(f.since, f.until, lo, hi)
    if pp is None:
        return None, [], {}
    analysis: list[tuple[str | None, str, Sums]] = []
    pre: dict[str, Sums] = defaultdict(Sums)
    window: dict[tuple[str, str], Sums] = defaultdict(Sums)  # per (product, policy), all of it
    for r in cube_rows:
        if r[2] in RANDOMIZED:
            window[(r[0], r[2])] += Sums.of(r, 3)
    if pp.source == "before_since":
        for product_id, n, *rest in q.pre_period_sums(pp.start, pp.end):
            pre[product_id] += Sums.of((n, *rest), 0)
        analysis = [(product_id, policy, s) for (product_id, policy), s in window.items()]
        return pp, analysis, pre
    # The first part is read once (a fifth of the window); the rest is the window less it.
    first: dict[tuple[str, str], Sums] = defaultdict(Sums)
    for product_id, policy, *rest in q.product_sums(hi=pp.end):
        part = Sums.of(rest, 0)
        pre[product_id] += part
        first[(product_id, policy)] += part
    for (product_id, policy), s in window.items():
        early = first.get((product_id, policy), Sums())
        analysis.append((pre_period.NO_COVARIATE, policy, early))
        analysis.append((product_id, policy, s - early))
    return pp, analysis, pre


def _span(f: Filters, lo: float | None, hi: float | None) -> float:
    start = f.since if f.since is not None else lo
    end = f.until if f.until is not None else hi
    if start is None or end is None:
        return 0.0
    return max(end - start, 0.0)


def _ope(
    sessions: sessionmaker[Session],
    raw: Sequence[Any],
    randomized: int,
    limit: int,
    greedy: bool,
    meta: dict[str, tuple[str, str, str]],
) -> dict[str, Any]:
    rows, kept = to_rows(raw)
    choices: list[int | None] | None = None
    scored: dict[str, Any] = {}
    if not greedy:
        note = "greedy policy not evaluated (disabled for this report)"
    elif not rows:
        note = "no randomized decisions to score"
    else:
        from reports.greedy import greedy_actions

        score = greedy_actions(sessions, [raw[i] for i in kept])
        choices, note, scored = score.choices, score.note, score.describe()
    groups = {v: m[0] for v, m in meta.items() if m[0]}
    panel = counterfactual_panel(rows, choices, note, groups=groups)
    if scored and panel["policies"]["greedy"].get("available"):
        panel["policies"]["greedy"].update(scored)
    sampled = randomized > len(raw)
    return {
        "sample": {
            "n": len(rows),
            "randomized_decisions": randomized,
            "limit": limit,
            "sampled": sampled,
            "note": (
                f"the {len(rows)} most recent of {randomized} randomized (bandit or control) "
                "decisions in the window"
                if sampled
                else f"all {len(rows)} randomized (bandit or control) decisions in the window"
            ),
        },
        **panel,
    }


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf) replaced by None, recursively: JSON has
    no NaN, and a report must parse everywhere. The estimators already return None where they
    cannot compute; this is the last guard.

    >>> finite({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"})
    {'a': [1.0, None], 'b': {'c': None}, 'd': 'x'}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value

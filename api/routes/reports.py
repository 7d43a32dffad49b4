"""The uplift report for analysts: JSON or CSV (`/v1/reports/uplift`) and an HTML page (`/reports`).

The report itself is computed by `reports` from the ledger; these routes parse the
window, pick the format, and run the (database-heavy) work in the thread pool via sync `def`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response

from api.auth import require
from api.deps import ReadsDep, SettingsDep
from api.errors import AUTH_RESPONSES, AUTH_RESPONSES_NOT_JSON, InvalidRequest
from reports import to_csv, uplift_report
from reports.features import DEFAULT_FEATURE_SAMPLE
from reports.html import to_html
from reports.uplift import DEFAULT_OPE_SAMPLE
from reports.window import BadWindow, parse_window

router = APIRouter(
    tags=["reports"], dependencies=[Depends(require("analyst"))], responses=AUTH_RESPONSES
)

TimeParam = Annotated[
    str | None,
    Query(description="ISO-8601 (naive means UTC), epoch seconds, or epoch milliseconds."),
]
CiParam = Annotated[
    Literal["fixed", "sequential"],
    Query(
        description="Interval kind: `fixed` (95%, read once) or `sequential` (always-valid 95% "
        "confidence sequences: safe to watch continuously and stop on)."
    ),
]
FeatureSampleParam = Annotated[
    int,
    Query(
        ge=0,
        le=50_000,
        description="Newest closed decisions the feature-importance section reads (it retrains "
        "a model per feature group: seconds); 0 leaves it out (the default of the JSON/CSV "
        "report, 2,000 on the HTML page).",
    ),
]
OpeSampleParam = Annotated[
    int,
    Query(
        ge=0,
        le=200_000,
        description="Most recent randomized decisions the counterfactual panel scores "
        "(0 leaves the panel out).",
    ),
]


def parse_times(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """Both bounds (`reports.window.parse_window`); 422 naming the bound that is wrong."""
    try:
        return parse_window(since, until)
    except BadWindow as bad:
        raise _refusal(bad) from None


def _refusal(bad: BadWindow) -> InvalidRequest:
    return InvalidRequest(str(bad), [{"field": f"query.{bad.field}", "reason": bad.reason}])


def _report(
    sessions: ReadsDep,
    settings: SettingsDep,
    since: str | None,
    until: str | None,
    product_id: str | None,
    ope_sample: int = DEFAULT_OPE_SAMPLE,
    ci: str = "fixed",
    feature_sample: int = 0,
) -> dict[str, Any]:
    since_ts, until_ts = parse_times(since, until)
    return uplift_report(
        sessions,
        settings,
        since=since_ts,
        until=until_ts,
        product_id=product_id,
        ope_sample=ope_sample,
        ci=ci,
        feature_sample=feature_sample,
    )


@router.get(
    "/v1/reports/uplift",
    response_model=dict[str, Any],
    responses={200: {"content": {"text/csv": {}}, "description": "The report (JSON or CSV)."}},
)
def uplift(
    sessions: ReadsDep,
    settings: SettingsDep,
    since: TimeParam = None,
    until: TimeParam = None,
    product_id: Annotated[str | None, Query(max_length=128)] = None,
    format: Literal["json", "csv"] = "json",  # the contract names it so
    ope_sample: OpeSampleParam = DEFAULT_OPE_SAMPLE,
    ci: CiParam = "fixed",
    feature_sample: FeatureSampleParam = 0,
) -> Any:
    """Bandit vs control over decisions with `since <= ts < until` (optionally one product):
    arms, uplift (each metric with its CUPED twin), sample-ratio check, per-product/variant/
    context/generator-version rows, time series and the counterfactual panel; `ci` picks fixed
    or always-valid (sequential) intervals."""
    report = _report(sessions, settings, since, until, product_id, ope_sample, ci, feature_sample)
    if format == "csv":
        return Response(
            to_csv(report),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="uplift.csv"'},
        )
    return report


@router.get("/reports", response_class=HTMLResponse, responses=AUTH_RESPONSES_NOT_JSON)
def report_page(
    sessions: ReadsDep,
    settings: SettingsDep,
    since: TimeParam = None,
    until: TimeParam = None,
    product_id: Annotated[str | None, Query(max_length=128)] = None,
    ope_sample: OpeSampleParam = DEFAULT_OPE_SAMPLE,
    ci: CiParam = "fixed",
    feature_sample: FeatureSampleParam = DEFAULT_FEATURE_SAMPLE,
) -> HTMLResponse:
    """The report as an HTML page with charts."""
    report = _report(sessions, settings, since, until, product_id, ope_sample, ci, feature_sample)
    return HTMLResponse(to_html(report))

"""Feature importance for analysts (`GET /v1/reports/features`): the model's weights by feature
and namespace, and each feature group's worth (`reports.features`). Retraining a model per
group takes seconds on the default sample: a sync route, run in the thread pool."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api.auth import require
from api.deps import ReadsDep, SettingsDep
from api.errors import AUTH_RESPONSES
from api.routes.reports import TimeParam, parse_times
from reports import finite
from reports.features import DEFAULT_FEATURE_SAMPLE, DEFAULT_TOP, feature_report
from reports.queries import Filters

router = APIRouter(
    tags=["reports"], dependencies=[Depends(require("analyst"))], responses=AUTH_RESPONSES
)


@router.get("/v1/reports/features", response_model=dict[str, Any])
def features(
    sessions: ReadsDep,
    settings: SettingsDep,
    since: TimeParam = None,
    until: TimeParam = None,
    product_id: Annotated[str | None, Query(max_length=128)] = None,
    sample: Annotated[
        int,
        Query(
            ge=20,
            le=50_000,
            description="Newest closed decisions in the window the section reads (the groups' "
            "models learn the older two thirds and are scored on the newest third).",
        ),
    ] = DEFAULT_FEATURE_SAMPLE,
    top: Annotated[int, Query(ge=1, le=10_000, description="Features listed.")] = DEFAULT_TOP,
) -> dict[str, Any]:
    """`features` ({namespace, feature, importance, weight}, largest first), `namespaces`
    (totals), `groups` ({group, label, ope_without, snips_change}), `all_features`, `sample`."""
    f = Filters(*parse_times(since, until), product_id)
    out: dict[str, Any] = finite(feature_report(sessions, settings, f, sample, top))
    return out

"""The report as one CSV: a `section` column says what each row is.

Sections: `arm`, `uplift`, `uplift_cuped`, `intervals`, `cuped`, `srm`, `product`,
`product_uplift`, `variant`, `generator_version`, `context:<key>`, `timeseries:<arm>`,
`timeseries:lift`, `ope:<policy>`, `ope.shadow:<explorer>`, `apprentice`, `feature`,
`feature_namespace`, `feature_group:<group>`. Columns a section does not use are empty; new
columns are appended at the end so readers that pick columns by name or position keep working.

Each section is written by one function in `WRITERS` (report dict → rows), in order: a new
report section is one more function.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import Any

COLUMNS = [
    "section",
    "key",
    "impressions",
    "clicks",
    "purchases",
    "revenue",
    "ctr",
    "cvr",
    "revenue_per_impression",
    "relative",
    "absolute",
    "ci_low",
    "ci_high",
    "p_value",
    "traffic_share",
    "snips_ctr",
    "snips_cvr",
    "snips_revenue_per_impression",
    "style",
    "source",
    "generator_version",
    "value",
    "ess",
    "note",
    "variance_reduction",
    "low_ess",
    "snips_ctr_ci_low",
    "snips_ctr_ci_high",
    "snips_cvr_ci_low",
    "snips_cvr_ci_high",
    "snips_revenue_per_impression_ci_low",
    "snips_revenue_per_impression_ci_high",
]
_COUNTS = ("impressions", "clicks", "purchases", "revenue", "ctr", "cvr", "revenue_per_impression")
_LIFT = ("relative", "absolute", "ci_low", "ci_high", "p_value")

Row = dict[str, Any]


def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: d.get(k) for k in keys}


def _snips(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m, e in row["snips"].items():
        out[f"snips_{m}"] = e["value"]
        out[f"snips_{m}_ci_low"] = e["ci_low"]
        out[f"snips_{m}_ci_high"] = e["ci_high"]
    return {**out, "ess": row.get("ess"), "low_ess": row.get("low_ess")}


def arms(report: dict[str, Any]) -> Iterator[Row]:
    for arm, m in report["arms"].items():
        yield {"section": "arm", "key": arm, **_pick(m, _COUNTS)}


def headline(report: dict[str, Any]) -> Iterator[Row]:
    for metric, u in report["uplift"].items():
        yield {"section": "uplift", "key": metric, **_pick(u, _LIFT), "note": u.get("note") or ""}
    for metric, u in report["uplift"].items():
        c = u.get("cuped")
        if c is not None:
            yield {
                "section": "uplift_cuped",
                "key": metric,
                **_pick(c, _LIFT),
                "variance_reduction": c["variance_reduction"],
                "note": c.get("note") or "",
            }
    intervals = report.get("intervals")
    if intervals:
        yield {"section": "intervals", "key": intervals["kind"], "note": intervals["method"]}
    cuped = report.get("cuped")
    if cuped:
        pre = cuped.get("pre_period") or {}
        yield {
            "section": "cuped",
            "key": "pre_period",
            "impressions": pre.get("impressions"),
            "note": f"{cuped['note']}; covariate: {cuped['covariate']}",
        }
    srm = report["srm"]
    yield {
        "section": "srm",
        "key": "control_share",
        "value": srm["observed_control_share"],
        "p_value": srm["p_value"],
        "note": f"expected {srm['expected_control_share']}"
        + ("; MISMATCH" if srm["mismatch"] else ""),
    }


def products(report: dict[str, Any]) -> Iterator[Row]:
    for p in report.get("products", []):
        yield {"section": "product", "key": p["product_id"], **_pick(p, _COUNTS)}
        for metric, u in p["uplift"].items():
            yield {
                "section": "product_uplift",
                "key": f"{p['product_id']}/{metric}",
                **_pick(u, _LIFT),
            }


def variants(report: dict[str, Any]) -> Iterator[Row]:
    for v in report["variants"]:
        yield {
            "section": "variant",
            "key": f"{v['product_id']}/{v['variant_id']}",
            **_pick(v, (*_COUNTS, "traffic_share", "style", "source", "generator_version")),
            **_snips(v),
            "note": "rates biased (adaptive allocation); snips_* are propensity-weighted"
            + ("; LOW ESS: too thin to read" if v.get("low_ess") else ""),
        }
    for g in report.get("generator_versions", []):
        yield {
            "section": "generator_version",
            "key": g["generator_version"],
            **_pick(g, (*_COUNTS, "traffic_share")),
            **_snips(g),
        }


def contexts(report: dict[str, Any]) -> Iterator[Row]:
    for key, values in report.get("contexts", {}).items():
        for v in values:
            yield {
                "section": f"context:{key}",
                "key": v["value"],
                **_pick(v, (*_COUNTS, "traffic_share")),
                **{f: v["uplift"]["ctr"][f] for f in _LIFT},
                "note": "lift columns: ctr, bandit vs control within this value",
            }


def timeseries(report: dict[str, Any]) -> Iterator[Row]:
    for point in report.get("timeseries", {}).get("points", []):
        for arm, m in point["arms"].items():
            yield {"section": f"timeseries:{arm}", "key": point["start_iso"], **_pick(m, _COUNTS)}
        yield {
            "section": "timeseries:lift",
            "key": point["start_iso"],
            **_pick(point["cumulative_lift"]["ctr"], _LIFT),
            "value": point["control_share"],
            "note": "cumulative ctr lift; value = control share of the bucket",
        }


def ope(report: dict[str, Any]) -> Iterator[Row]:
    for name, pol in report.get("ope", {}).get("policies", {}).items():
        if not pol.get("available"):
            yield {"section": f"ope:{name}", "key": "", "note": pol.get("note", "")}
            continue
        note = "; ".join(x for x in (pol.get("warning"), pol.get("note")) if x)
        yield from _estimates(f"ope:{name}", pol["estimates"], note)


def shadow(report: dict[str, Any]) -> Iterator[Row]:
    """`ope.shadow:<explorer>` (and `ope.shadow:live`): each estimate with its interval."""
    block = report.get("ope", {}).get("shadow")
    if not block:
        return
    if not block.get("available"):
        yield {"section": "ope.shadow", "key": "", "note": block.get("note", "")}
        return
    targets = [("live", block["live"])] + [(e["explorer"], e) for e in block["explorers"]]
    for name, target in targets:
        note = target.get("warning") or ""
        yield from _estimates(f"ope.shadow:{name}", target["estimates"], note)


def _estimates(section: str, estimates: dict[str, Any], note: str) -> Iterator[Row]:
    """One row per metric and estimator of an off-policy block, with its interval."""
    for metric, per in estimates.items():
        for estimator, e in per.items():
            yield {
                "section": section,
                "key": f"{metric}/{estimator}",
                "value": e["value"],
                "ci_low": e["ci_low"],
                "ci_high": e["ci_high"],
                "ess": e["ess"],
                "impressions": e["n"],
                "note": note,
            }


def features(report: dict[str, Any]) -> Iterator[Row]:
    """`feature` (key namespace/feature, value = importance), `feature_namespace`, and
    `feature_group:<g>` (key metric/estimator: the value without the group; `all` for none)."""
    block = report.get("features")
    if not block:
        return
    for w in block.get("features", []):
        yield {
            "section": "feature",
            "key": f"{w['namespace']}/{w['feature']}",
            "value": w["importance"],
            "absolute": w["weight"],
        }
    for ns in block.get("namespaces", []):
        yield {"section": "feature_namespace", "key": ns["namespace"], "value": ns["importance"]}
    targets = [("all", block.get("all_features"))]
    targets += [(g["group"], g.get("ope_without")) for g in block.get("groups", [])]
    for name, target in targets:
        if target is None:
            continue
        yield from _estimates(
            f"feature_group:{name}", target["estimates"], target.get("warning") or ""
        )


def apprentice(report: dict[str, Any]) -> Iterator[Row]:
    """`apprentice`: per metric, live mode's DR estimate and the uplift of switching to it."""
    block = report.get("apprentice")
    if not block:
        return
    if not block.get("available"):
        yield {"section": "apprentice", "key": "", "note": block.get("note", "")}
        return
    note = "; ".join(x for x in (block.get("warning"), block.get("note")) if x)
    for metric, m in block["metrics"].items():
        live = m["live"]["dr"]
        yield {
            "section": "apprentice",
            "key": f"{metric}/live",
            "value": live["value"],
            "ci_low": live["ci_low"],
            "ci_high": live["ci_high"],
            "ess": block["ess"],
            "impressions": block["decisions"],
            "note": note,
        }
        u = m["uplift"]
        yield {
            "section": "apprentice",
            "key": f"{metric}/uplift",
            **_pick(u, _LIFT),
            "value": m["apprentice"],
            "impressions": block["decisions"],
            "note": "live minus apprentice; value = apprentice mode's mean",
        }


#: The section writers, in output order.
WRITERS: list[Callable[[dict[str, Any]], Iterator[Row]]] = [
    arms,
    headline,
    products,
    variants,
    contexts,
    timeseries,
    ope,
    shadow,
    apprentice,
    features,
]


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, restval="", extrasaction="ignore")
    w.writeheader()
    for writer in WRITERS:
        w.writerows(writer(report))
    return buf.getvalue()

"""The report as one CSV: a `section` column says what each row is.

Sections: `arm`, `uplift`, `srm`, `product`, `product_uplift`, `variant`, `generator_version`,
`context:<key>`, `timeseries:<arm>`, `timeseries:lift`, `ope:<policy>`. Columns a section does not
use are empty.
"""

from __future__ import annotations

import csv
import io
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
]
_COUNTS = ("impressions", "clicks", "purchases", "revenue", "ctr", "cvr", "revenue_per_impression")
_LIFT = ("relative", "absolute", "ci_low", "ci_high", "p_value")


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, restval="", extrasaction="ignore")
    w.writeheader()
    for arm, m in report["arms"].items():
        w.writerow({"section": "arm", "key": arm, **_pick(m, _COUNTS)})
    for metric, u in report["uplift"].items():
        w.writerow({"section": "uplift", "key": metric, **_pick(u, _LIFT)})
    srm = report["srm"]
    w.writerow(
        {
            "section": "srm",
            "key": "control_share",
            "value": srm["observed_control_share"],
            "p_value": srm["p_value"],
            "note": f"expected {srm['expected_control_share']}"
            + ("; MISMATCH" if srm["mismatch"] else ""),
        }
    )
    for p in report.get("products", []):
        w.writerow({"section": "product", "key": p["product_id"], **_pick(p, _COUNTS)})
        for metric, u in p["uplift"].items():
            w.writerow(
                {
                    "section": "product_uplift",
                    "key": f"{p['product_id']}/{metric}",
                    **_pick(u, _LIFT),
                }
            )
    for v in report["variants"]:
        w.writerow(
            {
                "section": "variant",
                "key": f"{v['product_id']}/{v['variant_id']}",
                **_pick(v, (*_COUNTS, "traffic_share", "style", "source", "generator_version")),
                **_snips(v),
                "note": "rates biased (adaptive allocation); snips_* are propensity-weighted",
            }
        )
    for g in report.get("generator_versions", []):
        w.writerow(
            {
                "section": "generator_version",
                "key": g["generator_version"],
                **_pick(g, (*_COUNTS, "traffic_share")),
                **_snips(g),
            }
        )
    for key, values in report.get("contexts", {}).items():
        for v in values:
            w.writerow(
                {
                    "section": f"context:{key}",
                    "key": v["value"],
                    **_pick(v, (*_COUNTS, "traffic_share")),
                    **{f: v["uplift"]["ctr"][f] for f in _LIFT},
                    "note": "lift columns: ctr, bandit vs control within this value",
                }
            )
    for point in report.get("timeseries", {}).get("points", []):
        for arm, m in point["arms"].items():
            w.writerow(
                {"section": f"timeseries:{arm}", "key": point["start_iso"], **_pick(m, _COUNTS)}
            )
        w.writerow(
            {
                "section": "timeseries:lift",
                "key": point["start_iso"],
                **_pick(point["cumulative_lift"]["ctr"], _LIFT),
                "value": point["control_share"],
                "note": "cumulative ctr lift; value = control share of the bucket",
            }
        )
    for name, pol in report.get("ope", {}).get("policies", {}).items():
        if not pol.get("available"):
            w.writerow({"section": f"ope:{name}", "key": "", "note": pol.get("note", "")})
            continue
        for metric, per in pol["estimates"].items():
            for estimator, e in per.items():
                w.writerow(
                    {
                        "section": f"ope:{name}",
                        "key": f"{metric}/{estimator}",
                        "value": e["value"],
                        "ci_low": e["ci_low"],
                        "ci_high": e["ci_high"],
                        "ess": e["ess"],
                        "impressions": e["n"],
                        "note": pol["warning"] or "",
                    }
                )
    return buf.getvalue()


def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: d.get(k) for k in keys}


def _snips(row: dict[str, Any]) -> dict[str, Any]:
    return {f"snips_{m}": e["value"] for m, e in row["snips"].items()}

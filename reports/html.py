"""The report as one self-contained HTML page: a jinja2 template and inline SVG charts whose
geometry is computed here, server-side (no JavaScript, no CDN, nothing to build).

The page is a layout (`templates/report.html`) that includes one partial per section,
`templates/sections/<name>.html`, in the order of `SECTIONS`; chart macros live in
`templates/macros.html`. A new report section is one partial, one name in `SECTIONS` and, if
it draws, one entry in `charts`. Every chart mark carries the number it draws in a `data-value`
attribute, so the page can be checked against the JSON report in a browser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

_ENV = Environment(
    loader=PackageLoader("reports", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
#: The page's sections, in order (each `templates/sections/<name>.html`).
SECTIONS = [
    "headline",
    "analyst",
    "timeseries",
    "ope",
    "shadow",
    "apprentice",
    "features",
    "products",
    "variants",
    "generator_versions",
    "contexts",
]
PALETTE = ("#2a6", "#36c", "#c63", "#a3a", "#3aa", "#aa3", "#666", "#c36", "#63c", "#6c3")
METRIC_LABELS = {"ctr": "CTR", "cvr": "CVR", "revenue_per_impression": "revenue / impression"}


def _pct(x: float | None, places: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:{'+' if sign else ''}.{places}f}%"


def _num(x: float | None, places: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{places}f}"


_ENV.filters["pct"] = _pct
_ENV.filters["num"] = _num
_ENV.filters["named_explorer"] = lambda e: (e["explorer"], e)  # a shadow row: (name, row)


def bar_chart(
    bars: list[tuple[str, float | None, float | None, float | None]],
    width: int = 420,
    fmt: str = ".2%",
) -> dict[str, Any]:
    """Geometry of a horizontal bar chart with optional interval whiskers.

    `bars` are `(label, value, low, high)`; a value of None (the report's JSON has no number
    for it) is drawn as "n/a". Returns rows of pixel coordinates for the template.
    """
    top = max([b[1] or 0 for b in bars] + [b[3] or 0 for b in bars] + [1e-12])
    scale = (width - 160) / top
    rows = []
    for i, (label, value, low, high) in enumerate(bars):
        rows.append(
            {
                "label": label,
                "value": value,
                "y": 10 + i * 34,
                "w": 1.0 if value is None else max(value * scale, 1.0),
                "text": "n/a" if value is None else format(value, fmt),
                "lo": None if low is None else 120 + max(low, 0) * scale,
                "hi": None if high is None else 120 + high * scale,
            }
        )
    return {"width": width, "height": 20 + 34 * len(bars), "rows": rows}


def forest_plot(
    rows: Sequence[tuple[str, float | None, float | None, float | None]],
    width: int = 520,
    ref: float | None = 0.0,
    fmt: str = "+.1%",
) -> dict[str, Any]:
    """Point estimates with 95% intervals on one shared axis (`ref` draws a reference line).

    `rows` are `(label, value, low, high)`; a row whose value is None is drawn as "n/a".
    """
    xs = [x for _, v, lo, hi in rows for x in (v, lo, hi) if x is not None and math.isfinite(x)]
    if ref is not None:
        xs.append(ref)
    lo_x, hi_x = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if hi_x - lo_x < 1e-12:
        lo_x, hi_x = lo_x - 1.0, hi_x + 1.0
    pad = 0.05 * (hi_x - lo_x)
    lo_x, hi_x = lo_x - pad, hi_x + pad
    left, right = 190, width - 90

    def px(x: float) -> float:
        return left + (x - lo_x) / (hi_x - lo_x) * (right - left)

    out = []
    for i, (label, value, low, high) in enumerate(rows):
        y = 18 + i * 26
        out.append(
            {
                "label": label,
                "value": value,
                "y": y,
                "cx": None if value is None else px(value),
                "lo": None if low is None else px(low),
                "hi": None if high is None else px(high),
                "text": "n/a" if value is None else format(value, fmt),
            }
        )
    return {
        "width": width,
        "height": 30 + 26 * len(rows),
        "rows": out,
        "ref": None if ref is None else px(ref),
        "left": left,
    }


def line_chart(
    series: Sequence[tuple[str, Sequence[float | None]]],
    labels: Sequence[str],
    band: tuple[Sequence[float | None], Sequence[float | None]] | None = None,
    width: int = 640,
    height: int = 220,
    fmt: str = "+.1%",
    ref: float | None = 0.0,
) -> dict[str, Any]:
    """Lines over evenly spaced buckets (`labels`), an optional shaded band (low, high) under
    the first series, and a reference line. Missing values break nothing: they are skipped."""
    values = [v for _, ys in series for v in ys if v is not None and math.isfinite(v)]
    if ref is not None:
        values.append(ref)
    lo_y, hi_y = (min(values), max(values)) if values else (0.0, 1.0)
    if band is not None:
        # Early buckets have huge intervals: let the band widen the axis by at most the lines'
        # own spread on each side, and clip it there, so the lines stay readable.
        spread = max(hi_y - lo_y, 0.05)
        cap_lo, cap_hi = lo_y - spread, hi_y + spread
        finite = [v for b in band for v in b if v is not None and math.isfinite(v)]
        lo_y = max(min(finite + [lo_y]), cap_lo)
        hi_y = min(max(finite + [hi_y]), cap_hi)
        band = tuple([None if v is None else min(max(v, lo_y), hi_y) for v in b] for b in band)  # type: ignore[assignment]
    if hi_y - lo_y < 1e-12:
        lo_y, hi_y = lo_y - 1.0, hi_y + 1.0
    left, right, top, bottom = 60, width - 20, 10, height - 30
    n = max(len(labels), 1)

    def px(i: int) -> float:
        return left + (i + 0.5) * (right - left) / n

    def py(y: float) -> float:
        return bottom - (y - lo_y) / (hi_y - lo_y) * (bottom - top)

    lines = []
    for k, (name, ys) in enumerate(series):
        pts = [(px(i), py(y), y) for i, y in enumerate(ys) if y is not None and math.isfinite(y)]
        lines.append(
            {
                "name": name,
                "color": PALETTE[k % len(PALETTE)],
                "points": " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts),
                "marks": [{"x": x, "y": y, "value": v} for x, y, v in pts],
                "last": None if not pts else format(pts[-1][2], fmt),
            }
        )
    polygon = None
    if band is not None:
        lows, highs = band
        upper = [(px(i), py(h)) for i, h in enumerate(highs) if h is not None and math.isfinite(h)]
        lower = [
            (px(i), py(lo)) for i, lo in enumerate(lows) if lo is not None and math.isfinite(lo)
        ]
        if upper and lower:
            polygon = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower[::-1])
    step = max(1, n // 6)
    ticks = [{"x": px(i), "label": labels[i]} for i in range(0, len(labels), step)]
    yticks = [{"y": py(v), "label": format(v, fmt)} for v in (lo_y, (lo_y + hi_y) / 2, hi_y)]
    return {
        "width": width,
        "height": height,
        "lines": lines,
        "band": polygon,
        "ref": None if ref is None or not lo_y <= ref <= hi_y else py(ref),
        "xticks": ticks,
        "yticks": yticks,
        "left": left,
        "right": right,
        "bottom": bottom,
    }


def stacked_bars(
    shares: Sequence[dict[str, float]], labels: Sequence[str], width: int = 640, height: int = 200
) -> dict[str, Any]:
    """One 100% column per bucket, split by key (e.g. the bandit's traffic by style)."""
    keys = sorted({k for s in shares for k in s})
    left, right, top, bottom = 60, width - 20, 10, height - 30
    n = max(len(shares), 1)
    col = (right - left) / n
    rects = []
    for i, s in enumerate(shares):
        y = float(bottom)
        for j, key in enumerate(keys):
            share = s.get(key, 0.0)
            h = share * (bottom - top)
            y -= h
            rects.append(
                {
                    "x": left + i * col + 0.5,
                    "y": y,
                    "w": max(col - 1.0, 0.5),
                    "h": h,
                    "color": PALETTE[j % len(PALETTE)],
                    "key": key,
                    "value": share,
                    "bucket": labels[i],
                }
            )
    step = max(1, n // 6)
    ticks = [{"x": left + (i + 0.5) * col, "label": labels[i]} for i in range(0, len(labels), step)]
    legend = [{"key": k, "color": PALETTE[j % len(PALETTE)]} for j, k in enumerate(keys)]
    return {
        "width": width,
        "height": height,
        "rects": rects,
        "xticks": ticks,
        "legend": legend,
        "left": left,
        "bottom": bottom,
    }


def _bucket_label(start: float, bucket_s: float) -> str:
    fmt = "%m-%d %H:%M" if bucket_s < 3600 else "%m-%d %H:00"
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d" if bucket_s >= 86400 else fmt)


def charts(report: dict[str, Any]) -> dict[str, Any]:
    """Every chart's geometry, from the report dict alone."""
    arms = report["arms"]
    out: dict[str, Any] = {"arms": {}}
    for metric, fmt in (("ctr", ".2%"), ("cvr", ".2%"), ("revenue_per_impression", ".3f")):
        out["arms"][metric] = bar_chart(
            [(arm, arms[arm][metric], None, None) for arm in ("bandit", "control")], fmt=fmt
        )
    out["lift"] = forest_plot(
        [
            (METRIC_LABELS[m], u["relative"], u["ci_low"], u["ci_high"])
            for m, u in report["uplift"].items()
        ]
    )
    cuped_rows = []
    for m, u in report["uplift"].items():
        c = u.get("cuped") or {}
        cuped_rows.append((f"{METRIC_LABELS[m]} plain", u["relative"], u["ci_low"], u["ci_high"]))
        cuped_rows.append(
            (f"{METRIC_LABELS[m]} CUPED", c.get("relative"), c.get("ci_low"), c.get("ci_high"))
        )
    out["cuped"] = forest_plot(cuped_rows)
    ts = report.get("timeseries", {})
    points = ts.get("points", [])
    labels = [_bucket_label(p["start"], ts.get("bucket_s", 86400.0)) for p in points]
    if points:
        ctr = [p["cumulative_lift"]["ctr"] for p in points]
        out["cumulative_lift"] = line_chart(
            [("cumulative CTR lift", [u["relative"] for u in ctr])],
            labels,
            band=([u["ci_low"] for u in ctr], [u["ci_high"] for u in ctr]),
        )
        out["control_share"] = line_chart(
            [("control share", [p["control_share"] for p in points])],
            labels,
            fmt=".1%",
            ref=report["settings"]["holdout"],
            height=160,
        )
        out["allocation"] = stacked_bars([p["bandit_by_style"] for p in points], labels)
    ope = report.get("ope", {})
    rows = []
    for name, pol in ope.get("policies", {}).items():
        if pol.get("available"):
            e = pol["estimates"]["ctr"]["snips"]
            rows.append((name, e["value"], e["ci_low"], e["ci_high"]))
    if rows:
        out["ope"] = forest_plot(rows, ref=None, fmt=".2%")
    return out


def to_html(report: dict[str, Any]) -> str:
    return _ENV.get_template("report.html").render(
        report=report, charts=charts(report), metric_labels=METRIC_LABELS, sections=SECTIONS
    )

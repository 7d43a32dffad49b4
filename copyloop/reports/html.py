"""The report as one self-contained HTML page (jinja2 template, inline SVG charts, no JS build)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

_ENV = Environment(
    loader=PackageLoader("copyloop", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def bar_chart(
    bars: list[tuple[str, float, float | None, float | None]], width: int = 420, fmt: str = ".2%"
) -> dict[str, Any]:
    """Geometry of a horizontal bar chart with optional interval whiskers.

    `bars` are `(label, value, low, high)`; returns rows of pixel coordinates for the template.
    """
    top = max([b[1] for b in bars] + [b[3] or 0 for b in bars] + [1e-12])
    scale = (width - 160) / top
    rows = []
    for i, (label, value, low, high) in enumerate(bars):
        rows.append(
            {
                "label": label,
                "y": 10 + i * 34,
                "w": max(value * scale, 1.0),
                "text": format(value, fmt),
                "lo": None if low is None else 120 + max(low, 0) * scale,
                "hi": None if high is None else 120 + high * scale,
            }
        )
    return {"width": width, "height": 20 + 34 * len(bars), "rows": rows}


def to_html(report: dict[str, Any]) -> str:
    arms = report["arms"]
    charts = {}
    for metric, fmt in (("ctr", ".2%"), ("cvr", ".2%"), ("revenue_per_impression", ".3f")):
        charts[metric] = bar_chart(
            [(arm, arms[arm][metric], None, None) for arm in ("bandit", "control")], fmt=fmt
        )
    return _ENV.get_template("report.html").render(report=report, charts=charts)

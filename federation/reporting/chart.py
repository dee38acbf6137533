"""A line chart of report figures as one self-contained SVG document, rendered on the server.

`line_chart` draws one polyline per series over the same x labels (a report's periods), with a
circle per point that has a value: a period without data leaves a gap, never a zero. Every
text is escaped here, once; the SVG needs no script, style sheet or font from anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["ChartSize", "line_chart", "nice_ticks"]

PALETTE = ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b")
"""Series colours, in order (p50, p95, p99, …)."""


@dataclass(frozen=True)
class ChartSize:
    width: int = 760
    height: int = 320
    left: int = 64
    right: int = 110
    top: int = 16
    bottom: int = 48


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high` (1-2-5 steps), about `count` of them."""
    if not high > 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _number(value: float) -> str:
    return f"{value:.6g}"


def line_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    unit: str = "",
    title: str = "",
    size: ChartSize | None = None,
) -> str:
    """An SVG line chart: x = `labels` evenly spaced, one line per series (its values aligned
    with `labels`, None where it has none), y from 0 with round ticks.

    Guarantees: one `<circle class="point">` per non-None value, carrying `data-series`,
    `data-label` and `data-value`; a `<title>` on each point for a tooltip; all text escaped.
    """
    s = size or ChartSize()
    plot_w, plot_h = s.width - s.left - s.right, s.height - s.top - s.bottom
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    ticks = nice_ticks(max(values, default=0.0))
    top = ticks[-1]

    def x(i: int) -> float:
        return s.left + (plot_w * (i + 0.5) / len(labels) if labels else 0.0)

    def y(v: float) -> float:
        return s.top + plot_h - plot_h * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{s.width}" '
        f'height="{s.height}" viewBox="0 0 {s.width} {s.height}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for t in ticks:
        parts.append(
            f'<line class="grid" x1="{s.left}" x2="{s.left + plot_w}" y1="{y(t):.1f}" '
            f'y2="{y(t):.1f}" stroke="#ddd"/><text x="{s.left - 6}" y="{y(t) + 4:.1f}" '
            f'text-anchor="end" font-size="11">{escape(_number(t))}</text>'
        )
    if unit:
        parts.append(
            f'<text x="12" y="{s.top + plot_h / 2:.1f}" font-size="11" '
            f'transform="rotate(-90 12 {s.top + plot_h / 2:.1f})" text-anchor="middle">'
            f"{escape(unit)}</text>"
        )
    every = max(1, math.ceil(len(labels) / 12))  # at most ~12 x labels, so they never overlap
    for i, label in enumerate(labels):
        if i % every == 0:
            parts.append(
                f'<text class="xlabel" x="{x(i):.1f}" y="{s.top + plot_h + 16}" font-size="11" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<line x1="{s.left}" x2="{s.left + plot_w}" y1="{s.top + plot_h}" '
        f'y2="{s.top + plot_h}" stroke="#555"/>'
    )
    for n, (name, vs) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        parts.append(f'<g class="series" data-series="{escape(name)}">')
        run: list[str] = []
        for i, v in enumerate(vs):
            if v is None or not math.isfinite(v):
                parts.extend(_polyline(run, colour))
                run = []
                continue
            run.append(f"{x(i):.1f},{y(v):.1f}")
        parts.extend(_polyline(run, colour))
        for i, v in enumerate(vs):
            if v is None or not math.isfinite(v):
                continue
            parts.append(
                f'<circle class="point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" '
                f'fill="{colour}" data-series="{escape(name)}" data-label="{escape(labels[i])}" '
                f'data-value="{_number(v)}"><title>{escape(labels[i])} {escape(name)}: '
                f"{escape(_number(v))} {escape(unit)}</title></circle>"
            )
        legend_y = s.top + 14 + 18 * n
        parts.append(
            f'<rect x="{s.left + plot_w + 14}" y="{legend_y - 9}" width="12" height="12" '
            f'fill="{colour}"/><text x="{s.left + plot_w + 32}" y="{legend_y + 1}" '
            f'font-size="12">{escape(name)}</text></g>'
        )
    if not values:
        parts.append(
            f'<text x="{s.left + plot_w / 2:.1f}" y="{s.top + plot_h / 2:.1f}" '
            'text-anchor="middle" font-size="14">no data in this range</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _polyline(points: list[str], colour: str) -> list[str]:
    if len(points) < 2:
        return []
    return [
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>'
    ]

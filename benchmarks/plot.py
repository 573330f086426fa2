"""The benchmark's plot as a hand-written SVG (no plotting library): events/s and p99 per
workload (clients x events per append), one line per path, on log scales."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from benchmarks.figures import Result

WIDTH, HEIGHT = 560, 380
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 80
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
NAMES = {
    "adapter": "adapter loop (no gRPC)",
    "floor": "gRPC alone (null server)",
    "server": "through the server",
}


@dataclass(frozen=True)
class Panel:
    title: str
    categories: Sequence[str]
    #: per series, one value per category (None: not measured)
    series: Mapping[str, Sequence[float | None]]


def panels(results: Sequence[Result]) -> list[Panel]:
    # By clients, then batch size: the x axis reads as load growing to the right.
    ordered = sorted(results, key=lambda r: (r.clients, r.batch, r.expected == "any"))
    categories = list(dict.fromkeys(r.label for r in ordered))
    throughput: dict[str, list[float | None]] = {}
    p99: dict[str, list[float | None]] = {}
    for r in results:
        name = NAMES.get(r.path, r.path)
        at = categories.index(r.label)
        throughput.setdefault(name, [None] * len(categories))[at] = r.events_per_s
        p99.setdefault(name, [None] * len(categories))[at] = (r.latency_ms or {}).get("p99")
    return [
        Panel("throughput, events/s", categories, throughput),
        Panel("p99 latency, ms", categories, p99),
    ]


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _ticks(low: float, high: float) -> list[float]:
    """1, 2, 5 per decade from the decade below `low` to the one above `high`."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    if first == last:
        last += 1
    return [m * 10.0**d for d in range(first, last) for m in (1, 2, 5)] + [10.0**last]


def _panel(panel: Panel, x0: float, colors: Mapping[str, str]) -> list[str]:
    values = [v for vs in panel.series.values() for v in vs if v is not None and v > 0]
    ticks = _ticks(min(values), max(values)) if values else [1.0, 10.0]
    low, high = math.log10(ticks[0]), math.log10(ticks[-1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(panel.categories), 1)

    def x(i: int) -> float:
        return x0 + LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (math.log10(v) - low) / (high - low))

    out = [
        f'<g class="panel" data-title={quoteattr(panel.title)}>',
        f'<text x="{x0 + WIDTH / 2:.1f}" y="{TOP - 18}" text-anchor="middle" '
        f'font-weight="bold">{escape(panel.title)}</text>',
        f'<rect x="{x0 + LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#888"/>',
    ]
    for t in ticks:
        out.append(
            f'<line x1="{x0 + LEFT}" x2="{x0 + LEFT + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
            f'stroke="#ddd"/><text x="{x0 + LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end" '
            f'font-size="11">{_label(t)}</text>'
        )
    for i, category in enumerate(panel.categories):
        out.append(
            f'<text transform="translate({x(i):.1f},{TOP + plot_h + 14}) rotate(35)" '
            f'font-size="11">{escape(category)}</text>'
        )
    for name, series in panel.series.items():
        color = colors[name]
        points = [(x(i), y(v), v) for i, v in enumerate(series) if v is not None and v > 0]
        out.append(f'<g class="series" data-series={quoteattr(name)} stroke="{color}">')
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
            out.append(f'<polyline points="{path}" fill="none" stroke-width="1.5"/>')
        out.extend(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}" data-value="{v:.6g}">'
            f"<title>{escape(name)}: {v:.4g}</title></circle>"
            for px, py, v in points
        )
        out.append("</g>")
    out.append("</g>")
    return out


def svg(panels: Sequence[Panel], title: str) -> str:
    """A standalone SVG document: the panels side by side, a legend of their series below."""
    width, legend_y = WIDTH * len(panels), HEIGHT + 20
    names = list(dict.fromkeys(name for p in panels for name in p.series))
    colors = {name: COLORS[n % len(COLORS)] for n, name in enumerate(names)}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{legend_y + 20}" '
        f'font-family="sans-serif" font-size="13">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{legend_y + 20}" fill="white"/>',
        f'<text x="10" y="16" font-size="12">{escape(title)}</text>',
    ]
    for n, panel in enumerate(panels):
        out.extend(_panel(panel, n * WIDTH, colors))
    for n, name in enumerate(names):
        lx = LEFT + n * 240
        out.append(
            f'<rect x="{lx}" y="{legend_y - 9}" width="12" height="12" '
            f'fill="{colors[name]}"/><text x="{lx + 18}" y="{legend_y + 1}">'
            f"{escape(name)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"

"""Line charts drawn on the server as SVG, and the number formats of the training pages.

No JavaScript library and nothing fetched from elsewhere: a chart is an ``<svg>`` the page (or an htmx
swap of it) shows as it is, so the live job page redraws by replacing the fragment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django import template

register = template.Library()

WIDTH, WIDE_WIDTH, HEIGHT = 560, 1040, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 10, 24
# At most this many points per line: a long run's curve keeps its shape, the page stays small.
MAX_POINTS = 400
# Few enough points to mark each one (sparse series such as the validation loss).
MARKED_POINTS = 40
COLORS = ("#4f46e5", "#e8590c", "#0f7a4a", "#c2255c", "#1c7ed6", "#8a5a00", "#5f3dc4", "#495057")

Point = tuple[float, float]


@register.inclusion_tag("training/_line_chart.html")
def line_chart(
    series: Mapping[str, Sequence[Sequence[float]]] | Iterable[tuple[str, Sequence[Sequence[float]]]],
    title: str,
    unit: str = "",
    x_label: str = "step",
    wide: bool = False,
) -> dict[str, Any]:
    """A line chart of named series of ``(x, y)`` points: one color per series, min/max ticks, a legend.

    ``series`` is ``{name: [(x, y), ...]}`` (or a list of ``(name, points)``); empty series are left
    out of the lines but named in the legend as "no data yet", and a chart with no points at all
    says so instead of drawing empty axes. ``wide`` draws it for a full-width row.
    """
    width = WIDE_WIDTH if wide else WIDTH
    pairs = list(series.items()) if isinstance(series, Mapping) else list(series)
    cleaned = [(str(name), _finite_points(points)) for name, points in pairs]
    everything = [point for _, points in cleaned for point in points]
    context: dict[str, Any] = {"title": title, "unit": unit, "x_label": x_label, "width": width, "height": HEIGHT}
    legend = []
    for index, (name, points) in enumerate(cleaned):
        last = points[-1] if points else None
        legend.append(
            {
                "name": name,
                "color": COLORS[index % len(COLORS)],
                "last": format_number(last[1]) if last else None,
                "last_x": format_number(last[0]) if last else None,
            }
        )
    context["legend"] = legend
    if not everything:
        context["lines"] = []
        context["summary"] = f"{title}: no data yet"
        return context

    x_low, x_high = _span([x for x, _ in everything])
    y_low, y_high = _span([y for _, y in everything])
    plot_width, plot_height = width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def place(point: Point) -> tuple[float, float]:
        x = LEFT + (point[0] - x_low) / (x_high - x_low) * plot_width
        y = TOP + (1 - (point[1] - y_low) / (y_high - y_low)) * plot_height
        return round(x, 1), round(y, 1)

    lines = []
    for index, (name, points) in enumerate(cleaned):
        if not points:
            continue
        placed = [place(point) for point in _thin(points)]
        marked = len(points) <= MARKED_POINTS
        lines.append(
            {
                "name": name,
                "color": COLORS[index % len(COLORS)],
                "path": "M" + " L".join(f"{x},{y}" for x, y in placed),
                "markers": [
                    {"x": x, "y": y, "label": f"{name}: {format_number(px)} {x_label}, {format_number(py)} {unit}"}
                    for (x, y), (px, py) in zip(placed, _thin(points), strict=True)
                ]
                if marked
                else [],
                "end": {
                    "x": placed[-1][0],
                    "y": placed[-1][1],
                    "label": f"{name}: {format_number(points[-1][1])} {unit} at {x_label} "
                    f"{format_number(points[-1][0])}",
                },
            }
        )
    middle = (y_low + y_high) / 2
    context.update(
        {
            "lines": lines,
            "left": LEFT,
            "right": width - RIGHT,
            "top": TOP,
            "bottom": HEIGHT - BOTTOM,
            "center": LEFT + plot_width // 2,
            "y_ticks": [
                {"y": place((x_low, value))[1], "label": format_number(value)} for value in (y_high, middle, y_low)
            ],
            "x_ticks": [
                {"x": LEFT, "label": format_number(x_low), "anchor": "start"},
                {"x": width - RIGHT, "label": format_number(x_high), "anchor": "end"},
            ],
            "summary": _summary(title, unit, x_label, cleaned),
        }
    )
    return context


def _finite_points(points: Iterable[Sequence[float]]) -> list[Point]:
    finite = []
    for point in points:
        try:
            x, y = float(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            finite.append((x, y))
    return sorted(finite)


def _span(values: list[float]) -> tuple[float, float]:
    """The data's range; a flat line gets a little room so it is drawn across the middle."""
    low, high = min(values), max(values)
    if high == low:
        room = abs(low) * 0.05 or 1.0
        return low - room, high + room
    return low, high


def _thin(points: list[Point]) -> list[Point]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


def _summary(title: str, unit: str, x_label: str, series: list[tuple[str, list[Point]]]) -> str:
    """What a screen reader says for the chart: each line's first and last value."""
    parts = []
    for name, points in series:
        if not points:
            parts.append(f"{name}: no data yet")
            continue
        (x0, y0), (x1, y1) = points[0], points[-1]
        parts.append(
            f"{name} from {format_number(y0)} at {x_label} {format_number(x0)} "
            f"to {format_number(y1)} at {x_label} {format_number(x1)}"
        )
    suffix = f" ({unit})" if unit else ""
    return f"{title}{suffix}: " + "; ".join(parts)


# ---- number formats ---------------------------------------------------------------------------------------


@register.filter
def format_number(value: Any) -> str:
    """A metric as an engineer reads it: 1.234 or 0.1234, 2e-4 for small values, 12.3k for large ones."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(number):
        return str(number)
    if number == 0:
        return "0"
    magnitude = abs(number)
    if magnitude >= 10_000:
        return compact(number)
    if magnitude < 0.001:
        mantissa, exponent = f"{number:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if number == int(number) and magnitude < 10_000:
        return str(int(number))
    return f"{number:.4g}" if magnitude < 1 else f"{number:.3f}".rstrip("0").rstrip(".")


@register.filter
def compact(value: Any) -> str:
    """Large counts short: 1.24B, 350M, 12.3k (parameters, tokens)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= size:
            return f"{number / size:.3g}{suffix}"
    return f"{number:.0f}"


@register.filter
def gib(value: Any) -> str:
    """Bytes as GiB with two decimals (memory per device)."""
    try:
        return f"{float(value) / 2**30:,.2f} GiB"
    except (TypeError, ValueError):
        return "–"


@register.filter
def duration(value: Any) -> str:
    """Seconds in words, rounded the way a person says them: 40 s, about 3 min, about 2 h 10 min."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"about {hours} h {rest} min" if rest else f"about {hours} h"
    return f"about {seconds / 86400:.1f} days"


@register.filter
def percent(value: Any, total: Any) -> float:
    """``value`` as a share of ``total`` in percent, capped at 100 (for bars)."""
    try:
        share = 100 * float(value) / float(total)
    except (TypeError, ValueError, ZeroDivisionError):
        return 0.0
    return round(max(0.0, min(100.0, share)), 1)


@register.filter
def share(value: Any, total: Any) -> str:
    """``value`` as a percentage of ``total`` with the digits that matter: 42%, 1.3%, 0.052%."""
    try:
        ratio = 100 * float(value) / float(total)
    except (TypeError, ValueError, ZeroDivisionError):
        return "–"
    if ratio >= 10 or ratio == 0:
        return f"{ratio:.0f}%"
    return f"{ratio:.2g}%"


# The estimator's memory parts, in the order (and with the colors) the bar shows them.
MEMORY_PARTS = {
    "weights": ("weights", "#4f46e5"),
    "trainable_weights": ("trainable copy", "#7c3aed"),
    "gradients": ("gradients", "#c2255c"),
    "optimizer": ("optimizer state", "#e8590c"),
    "activations": ("activations", "#1c7ed6"),
    "logits": ("logits and loss", "#0f7a4a"),
    "runtime": ("runtime", "#868e96"),
}


@register.filter
def memory_parts(estimate: Any) -> list[dict[str, Any]]:
    """An estimate's memory by part, as segments of one bar scaled to the device (or the total, if larger)."""
    breakdown = _field(estimate, "memory_breakdown") or {}
    total = max(float(_field(estimate, "memory_bytes") or 0), float(_field(estimate, "device_memory_bytes") or 0))
    order = [name for name in MEMORY_PARTS if name in breakdown] + [n for n in breakdown if n not in MEMORY_PARTS]
    parts = []
    for name in order:
        size = breakdown[name]
        if not size:
            continue
        label, color = MEMORY_PARTS.get(name, (name.replace("_", " "), "#adb5bd"))
        parts.append(
            {"name": label, "bytes": size, "width": round(100 * size / total, 2) if total else 0, "color": color}
        )
    return parts


@register.filter
def memory(value: Any) -> str:
    """Bytes as a person reads memory: 640 MiB below a GiB, 2.31 GiB above."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return "–"
    if size < 2**30:
        return f"{size / 2**20:,.0f} MiB" if size >= 2**20 else f"{size / 2**10:,.0f} KiB"
    return f"{size / 2**30:,.2f} GiB"


def _field(source: Any, name: str) -> Any:
    """An attribute of an ``Estimate`` or the same key of its stored dict (``TrainingJob.estimate``)."""
    return source.get(name) if isinstance(source, dict) else getattr(source, name, None)

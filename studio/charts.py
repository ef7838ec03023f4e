"""The geometry of the studio's charts: what an SVG template draws, worked out in plain Python.

Every chart is drawn on the server as an ``<svg>`` (no JavaScript library, nothing fetched from
elsewhere, so the Content-Security-Policy holds and an htmx swap redraws a live chart). The functions
here take plain numbers and return a ``Chart``: the frame, round axis ticks with their labels, the marks
(bars, stacked bars, lines, intervals) with a tooltip each, and a one-sentence summary that lists the
values for screen readers. ``studio/templatetags/charts.py`` draws them with ``templates/charts/``.

No Django here: the module is tested, and could be used, on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The text of the axes is 11px; a digit or letter is about this wide.
CHAR_WIDTH = 6.4
# Room around the plot: the y axis labels' width is added to the left; the x axis labels sit below.
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 10, 12, 22, 34
# At most this many points per line: a long run's curve keeps its shape, the page stays small.
MAX_POINTS = 400
# Few enough points to mark each one (sparse series such as the validation loss).
MARKED_POINTS = 40
COLORS = ("#4f46e5", "#e8590c", "#0f7a4a", "#c2255c", "#1c7ed6", "#8a5a00", "#5f3dc4", "#495057")

Point = tuple[float, float]


@dataclass(frozen=True)
class Scale:
    """An axis from ``low`` to ``high`` with round ``ticks`` every ``step`` (1, 2, 2.5 or 5 × 10ⁿ)."""

    low: float
    high: float
    step: float
    ticks: tuple[float, ...]

    def share(self, value: float) -> float:
        """Where ``value`` lies on the axis, from 0 (``low``) to 1 (``high``)."""
        return (value - self.low) / (self.high - self.low)

    def label(self, value: float) -> str:
        """A tick's label with the decimals the step needs: 2,500, 0.25, 1.5e-4."""
        return tick_label(value, self.step)


@dataclass(frozen=True)
class Tick:
    position: float
    label: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    count: str
    tooltip: str
    color: str = ""

    @property
    def center(self) -> float:
        return round(self.x + self.width / 2, 1)


@dataclass(frozen=True)
class Stack:
    """One category of a stacked bar chart: its segments from the bottom up, its total on top."""

    x: float
    width: float
    label: str
    total: str
    tooltip: str
    segments: list[Bar]

    @property
    def center(self) -> float:
        return round(self.x + self.width / 2, 1)

    @property
    def top(self) -> float:
        return self.segments[-1].y if self.segments else 0.0


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    tooltip: str


@dataclass(frozen=True)
class Line:
    name: str
    color: str
    path: str
    markers: list[Marker]
    end: Marker


@dataclass(frozen=True)
class Interval:
    """One row of an interval chart: ``low``–``high`` drawn as a band, ``value`` as a dot."""

    y: float
    label: str
    low: float
    high: float
    value: float
    tooltip: str


@dataclass(frozen=True)
class LegendItem:
    name: str
    color: str
    text: str


@dataclass
class Chart:
    """Everything a chart template draws. ``empty`` charts draw only their caption, legend and summary."""

    title: str
    summary: str
    empty: bool
    width: float = 0
    height: float = 0
    left: float = 0
    right: float = 0
    top: float = 0
    bottom: float = 0
    y_unit: str = ""
    x_unit: str = ""
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    stacks: list[Stack] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    intervals: list[Interval] = field(default_factory=list)
    legend: list[LegendItem] = field(default_factory=list)

    @property
    def center(self) -> float:
        return round((self.left + self.right) / 2, 1)

    @property
    def label_x(self) -> float:
        """Where the category labels of a horizontal chart (or the y tick labels) end."""
        return self.left - 6


# ---- scales and numbers ----------------------------------------------------------------------------------


def nice_scale(low: float, high: float, *, ticks: int = 5, whole: bool = False) -> Scale:
    """A round axis covering ``low``..``high`` with about ``ticks`` ticks, each a multiple of the step.

    The step is 1, 2, 2.5 or 5 times a power of ten (never below 1 for ``whole`` numbers such as
    counts), and the axis starts and ends on a tick, so the data never runs past the last label. A single
    value gets an axis around it (from 0 when it is positive).
    """
    if low > high:
        low, high = high, low
    if high == low:
        if low > 0:
            low = 0.0
        elif high < 0:
            high = 0.0
        else:
            high = 1.0
    raw = (high - low) / max(ticks - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    if whole:
        step = max(1.0, float(math.ceil(step)))
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    count = round((last - first) / step)
    values = tuple(_tidy(first + index * step) for index in range(count + 1))
    return Scale(low=values[0], high=values[-1], step=step, ticks=values)


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as ``step`` has, thousands separated; tiny steps in e-notation."""
    if value == 0:
        return "0"
    if abs(step) < 1e-3:
        return _scientific(value, max(_decimals(step / 10 ** math.floor(math.log10(abs(value)))), 0))
    return f"{value:,.{_decimals(step)}f}"


def format_value(value: Any) -> str:
    """A measured value as an engineer reads it: 2,480 or 1.235 or 0.1235, 2e-4 when small, 12.3k when large."""
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(number):
        return str(number)
    magnitude = abs(number)
    if number == 0:
        return "0"
    if magnitude >= 10_000:
        for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if magnitude >= size:
                return f"{number / size:.3g}{suffix}"
    if magnitude < 0.001:
        return _scientific(number, 2)
    if number == int(number):
        return f"{int(number):,}"
    return f"{number:.4g}" if magnitude < 1 else f"{number:.3f}".rstrip("0").rstrip(".")


def format_count(value: float) -> str:
    """A count with thousands separators (what Django's ``intcomma`` writes), decimals only if it has any."""
    return f"{int(value):,}" if float(value) == int(value) else f"{value:,.2f}"


def _scientific(value: float, digits: int) -> str:
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _decimals(step: float) -> int:
    for places in range(0, 12):
        if abs(round(step, places) - step) < abs(step) * 1e-6:
            return places
    return 12


def _tidy(value: float) -> float:
    """Floating-point noise off a tick (0.30000000000000004 -> 0.3)."""
    return float(f"{value:.12g}")


# ---- bar charts ------------------------------------------------------------------------------------------


def bar_chart(
    pairs: Iterable[tuple[str, float]],
    title: str,
    *,
    y_unit: str = "",
    x_unit: str = "",
    y_max: float | None = None,
    width: float = 560,
    height: float = 220,
) -> Chart:
    """Vertical bars of ``(label, count)`` pairs from zero, on a round y axis, each count above its bar.

    A bar's height is proportional to its count. Each category is labelled under its bar when the labels
    fit, else the first and last are; an all-zero or empty series is a chart that says "no data". With
    ``y_max`` (a share's 100 %), the axis reaches at least that far and zeros are values like any other.
    """
    items = [(str(label), float(value)) for label, value in pairs]
    summary = _list_summary(title, y_unit, items)
    if not items or (y_max is None and not any(value for _, value in items)):
        return Chart(title=title, summary=f"{title}: no data", empty=True, y_unit=y_unit, x_unit=x_unit)
    top = max([value for _, value in items] + ([y_max] if y_max is not None else []))
    scale = nice_scale(0, top, whole=all(v == int(v) for _, v in items))
    chart = _frame(title, summary, scale, width, height, y_unit=y_unit, x_unit=x_unit)
    slot = (chart.right - chart.left) / len(items)
    gap = min(4.0, slot * 0.15)
    counts = [format_count(value) for _, value in items]
    show_counts = max(len(text) for text in counts) * CHAR_WIDTH <= slot
    for index, ((label, value), count) in enumerate(zip(items, counts, strict=True)):
        bar_height = (chart.bottom - chart.top) * scale.share(value)
        chart.bars.append(
            Bar(
                x=round(chart.left + index * slot + gap / 2, 1),
                y=round(chart.bottom - bar_height, 1),
                width=round(max(slot - gap, 1), 1),
                height=round(bar_height, 1),
                label=label,
                value=value,
                count=count if show_counts else "",
                tooltip=f"{label}: {count} {y_unit}".rstrip(),
            )
        )
    chart.x_ticks = _category_ticks([label for label, _ in items], chart.left, slot)
    return chart


def stacked_bar_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float]]],
    title: str,
    *,
    y_unit: str = "",
    width: float = 1040,
    height: float = 220,
) -> Chart:
    """Bars of ``categories`` made of one segment per ``(name, color, values)`` series, on a round y axis.

    Zero segments are left out; each segment's tooltip says "<category>: <count> <name> <unit>", each
    bar's its total. The legend gives each series' total; the summary lists the totals and every
    category with any count.
    """
    totals = [sum(values[index] for _, _, values in series) for index in range(len(categories))]
    legend = [LegendItem(name=name, color=color, text=format_count(sum(values))) for name, color, values in series]
    in_total = ", ".join(f"{name} {item.text}" for (name, _, _), item in zip(series, legend, strict=True))
    listed = "; ".join(
        f"{label} {format_count(total)}" for label, total in zip(categories, totals, strict=True) if total
    )
    unit = f" ({y_unit})" if y_unit else ""
    if not any(totals):
        return Chart(title=title, summary=f"{title}{unit}: no data", empty=True, legend=legend, y_unit=y_unit)
    summary = f"{title}{unit}: {in_total} in total; {listed}"
    scale = nice_scale(0, max(totals), whole=True)
    chart = _frame(title, summary, scale, width, height, y_unit=y_unit)
    chart.legend = legend
    plot = chart.bottom - chart.top
    slot = (chart.right - chart.left) / len(categories)
    gap = min(4.0, slot * 0.2)
    for index, label in enumerate(categories):
        x, bar_width = round(chart.left + index * slot + gap / 2, 1), round(max(slot - gap, 1), 1)
        base = chart.bottom
        segments = []
        for name, color, values in series:
            value = float(values[index])
            if not value:
                continue
            size = plot * value / scale.high
            base -= size
            segments.append(
                Bar(
                    x=x,
                    y=round(base, 1),
                    width=bar_width,
                    height=round(size, 1),
                    label=name,
                    value=value,
                    count=format_count(value),
                    tooltip=f"{label}: {format_count(value)} {name} {y_unit}".rstrip(),
                    color=color,
                )
            )
        total = format_count(totals[index])
        chart.stacks.append(
            Stack(
                x=x,
                width=bar_width,
                label=label,
                total=total if totals[index] else "",
                tooltip=f"{label}: {total} {y_unit} in all".replace("  ", " "),
                segments=segments,
            )
        )
    chart.x_ticks = _category_ticks(list(categories), chart.left, slot)
    return chart


# ---- line charts -----------------------------------------------------------------------------------------


def line_chart(
    series: Iterable[tuple[str, Iterable[Sequence[float]]]],
    title: str,
    *,
    y_unit: str = "",
    x_unit: str = "step",
    from_zero: bool = False,
    width: float = 560,
    height: float = 220,
) -> Chart:
    """Named series of ``(x, y)`` points as lines on round x and y axes: one color per series, a legend.

    Points that are not finite numbers are dropped. Empty series are left out of the lines but named in
    the legend as "no data yet"; a chart with no points at all is ``empty``. ``from_zero`` starts the y
    axis at 0 (for amounts such as memory, where a zoomed axis would turn noise into cliffs).
    """
    cleaned = [(str(name), _finite_points(points)) for name, points in series]
    legend = []
    for index, (name, points) in enumerate(cleaned):
        text = (
            f"{format_value(points[-1][1])} at {x_unit} {format_value(points[-1][0])}".replace("  ", " ")
            if points
            else "no data yet"
        )
        legend.append(LegendItem(name=name, color=COLORS[index % len(COLORS)], text=text))
    summary = _line_summary(title, y_unit, x_unit, cleaned)
    everything = [point for _, points in cleaned for point in points]
    if not everything:
        return Chart(title=title, summary=summary, empty=True, legend=legend, y_unit=y_unit, x_unit=x_unit)
    ys = [y for _, y in everything]
    y_scale = nice_scale(min([*ys, 0.0]) if from_zero else min(ys), max(ys))
    xs = [x for x, _ in everything]
    x_scale = nice_scale(min(xs), max(xs), whole=all(x == int(x) for x in xs))
    chart = _frame(title, summary, y_scale, width, height, y_unit=y_unit, x_unit=x_unit)
    chart.legend = legend
    plot_width, plot_height = chart.right - chart.left, chart.bottom - chart.top

    def place(point: Point) -> tuple[float, float]:
        return (
            round(chart.left + x_scale.share(point[0]) * plot_width, 1),
            round(chart.bottom - y_scale.share(point[1]) * plot_height, 1),
        )

    def tooltip(name: str, point: Point) -> str:
        return f"{name}: {format_value(point[1])} {y_unit} at {x_unit} {format_value(point[0])}".replace("  ", " ")

    for index, (name, points) in enumerate(cleaned):
        if not points:
            continue
        kept = _thin(points)
        placed = [place(point) for point in kept]
        chart.lines.append(
            Line(
                name=name,
                color=COLORS[index % len(COLORS)],
                path="M" + " L".join(f"{x},{y}" for x, y in placed),
                markers=[Marker(x, y, tooltip(name, point)) for (x, y), point in zip(placed, kept, strict=True)]
                if len(points) <= MARKED_POINTS
                else [],
                end=Marker(placed[-1][0], placed[-1][1], tooltip(name, points[-1])),
            )
        )
    chart.x_ticks = [
        Tick(round(chart.left + x_scale.share(value) * plot_width, 1), x_scale.label(value)) for value in x_scale.ticks
    ]
    return chart


# ---- interval charts -------------------------------------------------------------------------------------


def interval_chart(
    rows: Sequence[tuple[str, float, float, float]],
    title: str,
    *,
    x_unit: str = "",
    width: float = 1040,
    row_height: float = 26,
) -> Chart:
    """Horizontal rows of ``(label, value, low, high)``: the interval a band, the value a dot, on a round axis.

    The category labels sit left of the plot (truncated to fit); the value axis below has round ticks.
    """
    if not rows:
        return Chart(title=title, summary=f"{title}: no data", empty=True, x_unit=x_unit)
    summary = f"{title}: " + "; ".join(
        f"{label} {format_value(round(value))} ({format_value(round(low))}–{format_value(round(high))})"
        for label, value, low, high in rows
    )
    scale = nice_scale(min(row[2] for row in rows), max(row[3] for row in rows), ticks=6)
    left = min(220.0, PAD_LEFT + CHAR_WIDTH * max(len(row[0]) for row in rows) + 8)
    top = 8.0
    bottom = top + row_height * len(rows)
    chart = Chart(
        title=title,
        summary=summary,
        empty=False,
        width=width,
        height=bottom + PAD_BOTTOM,
        left=left,
        right=width - 2 * PAD_RIGHT,
        top=top,
        bottom=bottom,
        x_unit=x_unit,
    )
    plot = chart.right - chart.left

    def x(value: float) -> float:
        return round(chart.left + scale.share(value) * plot, 1)

    chart.x_ticks = [Tick(x(value), scale.label(value)) for value in scale.ticks]
    for index, (label, value, low, high) in enumerate(rows):
        chart.intervals.append(
            Interval(
                y=top + row_height * index + row_height / 2,
                label=label,
                low=x(low),
                high=x(high),
                value=x(value),
                tooltip=f"{label}: {value:,.0f} (95% interval {low:,.0f}–{high:,.0f})",
            )
        )
    return chart


# ---- shared parts ----------------------------------------------------------------------------------------


def _frame(
    title: str, summary: str, scale: Scale, width: float, height: float, *, y_unit: str = "", x_unit: str = ""
) -> Chart:
    """A chart with its plot area placed (the y labels' width decides the left edge) and its y ticks."""
    labels = [scale.label(value) for value in scale.ticks]
    left = PAD_LEFT + CHAR_WIDTH * max(len(label) for label in labels) + 6
    chart = Chart(
        title=title,
        summary=summary,
        empty=False,
        width=width,
        height=height,
        left=round(left, 1),
        right=width - PAD_RIGHT,
        top=PAD_TOP,
        bottom=height - PAD_BOTTOM,
        y_unit=y_unit,
        x_unit=x_unit,
    )
    plot = chart.bottom - chart.top
    chart.y_ticks = [
        Tick(round(chart.bottom - scale.share(value) * plot, 1), label, "end")
        for value, label in zip(scale.ticks, labels, strict=True)
    ]
    return chart


def _category_ticks(labels: list[str], left: float, slot: float) -> list[Tick]:
    """Every category's label under its bar when they all fit, else the first and the last."""
    if max(len(label) for label in labels) * CHAR_WIDTH <= slot * 0.95:
        return [Tick(round(left + (index + 0.5) * slot, 1), label) for index, label in enumerate(labels)]
    first = Tick(round(left, 1), labels[0], "start")
    return [first] if len(labels) == 1 else [first, Tick(round(left + slot * len(labels), 1), labels[-1], "end")]


def _list_summary(title: str, unit: str, items: list[tuple[str, float]]) -> str:
    suffix = f" ({unit})" if unit else ""
    return f"{title}{suffix}: " + ", ".join(f"{label} {format_count(value)}" for label, value in items)


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


def _thin(points: list[Point]) -> list[Point]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


def _line_summary(title: str, unit: str, x_unit: str, series: list[tuple[str, list[Point]]]) -> str:
    """What a screen reader says for a line chart: each line's first, lowest, highest and last value."""
    parts = []
    for name, points in series:
        if not points:
            parts.append(f"{name}: no data yet")
            continue
        (x0, y0), (x1, y1) = points[0], points[-1]
        ys = [y for _, y in points]
        parts.append(
            f"{name} from {format_value(y0)} at {x_unit} {format_value(x0)} to {format_value(y1)} at {x_unit} "
            f"{format_value(x1)} (lowest {format_value(min(ys))}, highest {format_value(max(ys))})"
        )
    suffix = f" ({unit})" if unit else ""
    return f"{title}{suffix}: " + "; ".join(parts)

"""The chart tags every page uses: ``{% load charts %}`` then ``bar_chart``, ``stacked_bar_chart``,
``line_chart`` or ``interval_chart``.

The geometry is ``studio.charts`` (plain Python); these tags only adapt a page's data to it and pick the
template under ``templates/charts/``. The library belongs to no app because every app draws charts:
``studio/settings.py`` registers it under ``TEMPLATES[0]["OPTIONS"]["libraries"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django import template

from studio import charts

register = template.Library()

WIDTH, WIDE_WIDTH = 560, 1040


@register.inclusion_tag("charts/bars.html")
def bar_chart(
    items: Mapping[str, float] | Iterable[Sequence[Any]],
    title: str,
    unit: str = "rows",
    x_unit: str = "",
    element_id: str = "",
    y_max: float | None = None,
) -> dict[str, Any]:
    """Bars of ``(label, count)`` pairs (or a ``{label: count}`` dict), counted in ``unit`` on the y axis (up to
    at least ``y_max`` when given: then zeros are drawn, not "no data")."""
    pairs = list(items.items()) if isinstance(items, Mapping) else [(item[0], item[1]) for item in items or []]
    chart = charts.bar_chart(pairs, title, y_unit=unit, x_unit=x_unit, y_max=y_max)
    return {"chart": chart, "element_id": element_id}


@register.inclusion_tag("charts/stacked_bars.html")
def stacked_bar_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float]]],
    title: str,
    unit: str = "",
    element_id: str = "",
    extra_class: str = "",
    empty_text: str = "No data yet.",
) -> dict[str, Any]:
    """Stacked bars: one bar per category, one segment per ``(name, color, values)`` series."""
    chart = charts.stacked_bar_chart(categories, series, title, y_unit=unit)
    return {"chart": chart, "element_id": element_id, "extra_class": extra_class, "empty_text": empty_text}


@register.inclusion_tag("charts/lines.html")
def line_chart(
    series: Mapping[str, Iterable[Sequence[float]]] | Iterable[tuple[str, Iterable[Sequence[float]]]],
    title: str,
    unit: str = "",
    x_label: str = "step",
    wide: bool = False,
    from_zero: bool = False,
) -> dict[str, Any]:
    """Lines of named ``(x, y)`` series (``{name: points}``); ``wide`` draws it for a full-width row."""
    pairs = list(series.items()) if isinstance(series, Mapping) else list(series)
    chart = charts.line_chart(
        pairs, title, y_unit=unit, x_unit=x_label, from_zero=from_zero, width=WIDE_WIDTH if wide else WIDTH
    )
    return {"chart": chart}


@register.inclusion_tag("charts/intervals.html")
def interval_chart(
    rows: Sequence[tuple[str, float, float, float]], title: str, unit: str = "", element_id: str = ""
) -> dict[str, Any]:
    """Rows of ``(label, value, low, high)``: each interval a band and its value a dot, on a round axis."""
    return {"chart": charts.interval_chart(rows, title, x_unit=unit), "element_id": element_id}

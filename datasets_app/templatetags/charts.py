"""Charts drawn on the server as SVG: no JavaScript library, nothing fetched from elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import template

register = template.Library()

WIDTH, HEIGHT, GAP = 560, 160, 2


@register.inclusion_tag("charts/bars.html")
def bar_chart(items: Sequence[Sequence[Any]] | dict[str, Any], title: str, unit: str = "rows") -> dict[str, Any]:
    """A bar chart of ``(label, value)`` pairs (or a ``{label: value}`` dict), with each value as a tooltip."""
    pairs = list(items.items()) if isinstance(items, dict) else [(item[0], item[1]) for item in items]
    top = max((float(value) for _, value in pairs), default=0.0) or 1.0
    slot = WIDTH / max(len(pairs), 1)
    bars = []
    for index, (label, value) in enumerate(pairs):
        height = round(HEIGHT * float(value) / top, 1)
        bars.append(
            {
                "x": round(index * slot + GAP / 2, 1),
                "y": round(HEIGHT - height, 1),
                "width": round(max(slot - GAP, 1), 1),
                "height": height,
                "label": label,
                "value": value,
            }
        )
    return {
        "title": title,
        "unit": unit,
        "bars": bars,
        "width": WIDTH,
        "height": HEIGHT,
        "first": pairs[0][0] if pairs else "",
        "last": pairs[-1][0] if pairs else "",
        "top": top,
        "show_labels": len(pairs) <= 8,
    }

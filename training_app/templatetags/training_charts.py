"""The number formats of the training pages that Django has no filter for, and the estimate's memory bar.

Charts are ``{% load charts %}`` (``studio.charts``); sizes in bytes are Django's ``filesizeformat`` and
large counts ``intword``/``intcomma`` (``django.contrib.humanize``). What stays here has no Django
equivalent: metrics to significant digits (``format_number``, shared with the charts' tooltips), a number
of seconds in words (``duration``, ``duration_range``: Django's ``timesince`` needs two datetimes),
percentages (``percent``, ``share``) and the memory bar's segments (``memory_parts``).
"""

from __future__ import annotations

import math
from typing import Any

from django import template

from studio import units
from studio.charts import format_value

register = template.Library()


# ---- number formats ---------------------------------------------------------------------------------------


# A metric as an engineer reads it: 1.234 or 0.1234, 2e-4 for small values, 12.3k for large ones.
format_number = register.filter("format_number", format_value)


# Parameters, tokens and memory: the studio's own formats (studio/units.py says why not humanize's).
register.filter("compact", units.count)
register.filter("memory", units.memory)


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
def duration_range(low: Any, high: Any) -> str:
    """Two durations as one range, in ``duration``'s words: 40–55 s, 5–9 min, 50 min – 2 h 10 min; one figure
    (``duration``'s) when both round to the same."""
    first, last = duration(low).removeprefix("about "), duration(high).removeprefix("about ")
    if "–" in (first, last):
        return "–"
    if first == last:
        return duration(low)
    for unit in (" s", " min", " days"):
        start, end = first.removesuffix(unit), last.removesuffix(unit)
        if start != first and end != last and start.replace(".", "").isdigit() and end.replace(".", "").isdigit():
            return f"{start}–{last}"
    return f"{first} – {last}"


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
    "generation": ("sampling (GRPO)", "#2b8a3e"),
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


def _field(source: Any, name: str) -> Any:
    """An attribute of an ``Estimate`` or the same key of its stored dict (``TrainingJob.estimate``)."""
    return source.get(name) if isinstance(source, dict) else getattr(source, name, None)

"""Counts and memory sizes as every page and message of the studio writes them.

Django's humanize has no short count to three figures (``intword`` says "4.0 million" for 3.95M
parameters) and ``filesizeformat`` labels binary sizes "GB": parameters, tokens and memory go through
these two instead, so a page never says 3.95M in one place and 4.0 million in another, and an estimate's
message says the same size as the chart beside it. File sizes (uploads, quotas) use ``filesizeformat``.
No Django here: the estimator uses these too.
"""

from __future__ import annotations

from typing import Any

KIB, MIB, GIB = 2**10, 2**20, 2**30


def count(value: Any) -> str:
    """Large counts short: 1.24B, 350M, 12.3k (parameters, tokens); "–" for no number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= size:
            return f"{number / size:.3g}{suffix}"
    return f"{number:.0f}"


def memory(value: Any) -> str:
    """Bytes as memory is counted (binary units, labelled as such): 640 MiB below a GiB, 2.31 GiB above."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return "–"
    if size < GIB:
        return f"{size / MIB:,.0f} MiB" if size >= MIB else f"{size / KIB:,.0f} KiB"
    return f"{size / GIB:,.2f} GiB"

"""An answer marked against its reference, word by word, for the run page's side-by-side rows.

Words the answer has and the reference lacks are wrapped in ``<ins>``, words of the reference the answer lacks in
``<del>`` (struck through), so a near miss reads at a glance. Every piece of text is escaped before it is wrapped:
answers are model output, never trusted markup.
"""

from __future__ import annotations

import difflib
import re

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# Words and the whitespace after them stay together, so the marked answer keeps its line breaks and spacing.
_TOKENS = re.compile(r"\S+\s*|\s+")
# Past this many words on either side the comparison (quadratic at worst) is skipped: the answer is shown plainly.
MAX_WORDS = 2_000


@register.filter
def marked_against(answer: str, reference: str) -> SafeString:
    """``answer`` as HTML, its differences from ``reference`` marked (``<ins>`` added, ``<del>`` missing)."""
    ours, theirs = _TOKENS.findall(answer or ""), _TOKENS.findall(reference or "")
    if not theirs or len(ours) > MAX_WORDS or len(theirs) > MAX_WORDS:
        return escape(answer or "")
    matcher = difflib.SequenceMatcher(a=[t.strip() for t in theirs], b=[t.strip() for t in ours], autojunk=False)
    pieces: list[str] = []
    for operation, ref_start, ref_end, start, end in matcher.get_opcodes():
        if operation == "equal":
            pieces.append(escape("".join(ours[start:end])))
            continue
        if ref_end > ref_start:
            pieces.append(f'<del class="diff-missing">{escape("".join(theirs[ref_start:ref_end]))}</del>')
        if end > start:
            pieces.append(f'<ins class="diff-extra">{escape("".join(ours[start:end]))}</ins>')
    return mark_safe("".join(pieces))  # noqa: S308 - every piece above is escaped

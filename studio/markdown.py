"""Member-written Markdown as HTML a page may include: rendered by markdown-it, then sanitized by nh3.

Raw HTML in the text is not rendered (markdown-it's ``html`` option is off, so it shows as typed), and
the rendered HTML is cleaned by nh3 to a short list of text tags whatever markdown-it produced: no script,
no style, no image (a remote image would tell its host who read the page), no event attribute, and links
only to http(s) and mailto addresses, opened without a referrer. No inline style either (the CSP refuses it).
"""

from __future__ import annotations

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

_PARSER = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")

ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "code", "pre", "blockquote",
        "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "del", "s",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}


def render_markdown(text: str) -> SafeString:
    """``text`` (Markdown) as sanitized HTML, safe to include in a page as is."""
    html = _PARSER.render(text or "")
    cleaned = nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(cleaned)  # noqa: S308 - nh3 has just removed everything not on the lists above

"""``{% load markdown %}`` then ``{{ text|markdown }}``: member-written Markdown as sanitized HTML.

The rendering and sanitizing is ``studio.markdown``; like the chart tags, the library belongs to no app
(``studio/settings.py`` registers it under ``TEMPLATES[0]["OPTIONS"]["libraries"]``).
"""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from studio.markdown import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    return render_markdown(str(text or ""))

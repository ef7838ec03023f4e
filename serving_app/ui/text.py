"""Member-written text inside the Markdown the playground and the arena show.

``gr.Markdown`` renders Markdown and the HTML inside it (sanitized in the browser, but still markup): a
model name, preset name, comparison title, team name or an error that quotes one of them must reach it as
literal text. Model answers and prompts go to ``gr.Chatbot``, which keeps Gradio's HTML sanitizer on
(``sanitize_html=True``) and preserves no custom tags (``allow_tags=False``); the CSP of /play/ keeps
anything left inert (no inline script, images only from the studio). Text shown whole inside a chatbot
message, such as a tool call's arguments, goes in a ``code_block``, which Markdown shows as typed.
"""

from __future__ import annotations

import html
import re

import gradio as gr

# Inline markup: emphasis, code, links and images, strike-through, maths. (Headings, lists, quotes and
# tables start a line, and the text is kept on one line.) CommonMark honours a backslash before each.
_INLINE_MARKUP = re.compile(r"([\\`*_\[\]~$])")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_BACKTICK_RUNS = re.compile(r"`+")


def markdown_text(value: object) -> str:
    """``value`` as literal text on one line of Markdown: HTML special characters as entities, markup escaped."""
    escaped = html.escape(_LINE_BREAKS.sub(" ", str(value)), quote=False)
    return _INLINE_MARKUP.sub(r"\\\1", escaped)


def code_block(value: object, language: str = "") -> str:
    """``value`` as a fenced Markdown code block: every character shown as typed, on as many lines as it has.

    Markdown renders nothing inside a code block (no HTML, no markup, no entity), and the fence is longer
    than any run of backticks in ``value``, so the text cannot close it early.
    """
    text = str(value)
    longest = max((len(run) for run in _BACKTICK_RUNS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def refusal(message: str) -> gr.Error:
    """``gr.Error(message)`` with ``message`` as literal text.

    Gradio renders an error's message as (sanitized) HTML in its toast; messages here quote preset names,
    comparison titles and validation errors that repeat what a member typed, so markup in them must show
    as the characters typed, not become a link or an image.
    """
    return gr.Error(html.escape(message, quote=False))

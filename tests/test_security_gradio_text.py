"""Member-written text reaches the playground's and the arena's Markdown as text, never as markup."""

from __future__ import annotations

from typing import Any

import gradio as gr
from asgiref.sync import async_to_sync
from django.core.exceptions import PermissionDenied, ValidationError

from serving_app.playground import _team_names, build_playground, refuse
from serving_app.ui.arena import _refusal, reveal_line
from serving_app.ui.compare import column_figures
from serving_app.ui.text import markdown_text
from tests.factories import MembershipFactory, TeamFactory

PAYLOAD = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"


def test_markdown_text_escapes_html_and_inline_markup() -> None:
    assert markdown_text(PAYLOAD) == ESCAPED
    assert (
        markdown_text("[click](javascript:alert(1)) **loud** `x`")
        == r"\[click\](javascript:alert(1)) \*\*loud\*\* \`x\`"
    )


def test_markdown_text_keeps_text_on_one_line() -> None:
    assert markdown_text("title\n# heading\n- item") == "title # heading - item"


def test_arena_reveal_escapes_model_names() -> None:
    line = reveal_line(f"job {PAYLOAD}", "[pwn](http://evil.example)")
    assert PAYLOAD not in line and f"job {ESCAPED}" in line
    assert r"\[pwn\](http://evil.example)" in line  # a link's brackets escaped: no link


def test_compare_figures_escape_an_error_quoting_a_model_name() -> None:
    line = column_figures({"error": f"model {PAYLOAD} is not loaded"})
    assert line == f"**No answer:** model {ESCAPED} is not loaded"


def test_error_toasts_show_member_text_as_text() -> None:
    """Gradio renders a ``gr.Error`` message as HTML: a name a member typed must arrive escaped."""
    assert _refusal(ValidationError(f"The preset “{PAYLOAD}” already exists.")).message == (
        f"The preset “{ESCAPED}” already exists."
    )
    assert refuse(PermissionDenied(f"Role {PAYLOAD}")).message == f"Role {ESCAPED}"


def test_session_line_escapes_team_names(alice: Any) -> None:
    team = TeamFactory(name=f"Evil {PAYLOAD}", slug="evil")
    MembershipFactory(team=team, user=alice, role="member")
    names = async_to_sync(_team_names)(alice)
    assert f"Evil {ESCAPED} (/t/evil/)" in names and not any(PAYLOAD in name for name in names)


def test_chatbots_keep_gradios_html_sanitizer_and_no_custom_tags(db: None) -> None:
    blocks = build_playground()
    chatbots = [block for block in blocks.blocks.values() if isinstance(block, gr.Chatbot)]
    markdowns = [block for block in blocks.blocks.values() if isinstance(block, gr.Markdown)]
    assert len(chatbots) == 6  # four compare columns, two arena sides
    assert all(chatbot.sanitize_html and chatbot.allow_tags is False for chatbot in chatbots)
    assert markdowns and all(markdown.sanitize_html for markdown in markdowns)

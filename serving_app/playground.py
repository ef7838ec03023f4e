"""The Gradio app mounted at /play/. Every handler re-checks who is calling through the Django session.

The comparison playground and the arena are built on this mount by the serving issue; what is here is
the authenticated shell: who you are and which teams you can work in.
"""

from __future__ import annotations

from typing import Any

import fastapi
import gradio as gr
from asgiref.sync import sync_to_async

from accounts.permissions import teams_of
from accounts.sessions import auser_from_cookies

# The site's look, with system fonts only: teams run the studio air-gapped (no Google Fonts, no CDN).
THEME = gr.themes.Base(
    primary_hue="indigo",
    neutral_hue="slate",
    font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
)


async def gradio_username(request: fastapi.Request) -> str | None:
    """Gradio's ``auth_dependency``: the Django user's name, or None (Gradio then answers 401)."""
    user = await auser_from_cookies(dict(request.cookies))
    return user.get_username() if user is not None else None


async def current_user(request: gr.Request) -> Any:
    """The Django user behind a Gradio event; raises if the session ended since the page loaded."""
    user = await auser_from_cookies(dict(request.cookies))
    if user is None:
        raise gr.Error("Your session has ended: sign in to the studio again.")
    return user


@sync_to_async
def _team_names(user: Any) -> list[str]:
    return [f"{team.name} (/t/{team.slug}/)" for team in teams_of(user)]


async def describe_session(request: gr.Request) -> str:
    user = await current_user(request)
    teams = await _team_names(user)
    listed = ", ".join(teams) if teams else "none yet"
    return f"Signed in as **{user.get_username()}**. Teams you can work in: {listed}."


def build_playground() -> gr.Blocks:
    with gr.Blocks(title="Atelier playground", analytics_enabled=False) as blocks:
        session = gr.Markdown(elem_id="session")
        blocks.load(describe_session, inputs=None, outputs=session, api_name="whoami")
    return blocks

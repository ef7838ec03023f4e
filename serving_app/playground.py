"""The Gradio app mounted at /play/: the side-by-side playground and the arena, embedded in the site's pages.

Who is calling is read from the Django session on every event (``gradio_username`` for the mount,
``team_access`` in each handler); which team comes from the page's ``?team=<slug>`` and travels in a
``gr.State`` that every handler takes as its first input and re-checks, so a handler called directly
through Gradio's API with another team's slug gets the same refusal as a non-member gets from the site.
"""

from __future__ import annotations

from typing import Any

import fastapi
import gradio as gr
from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied
from django.http import Http404

from accounts.permissions import TeamAccess, resolve_access, teams_of
from accounts.sessions import auser_from_cookies
from serving_app.mount import VIEWS
from serving_app.ui.text import markdown_text, refusal

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
        raise refusal("Your session has ended: sign in to the studio again.")
    return user


@sync_to_async
def _resolve_access(user: Any, team_slug: str) -> TeamAccess:
    return resolve_access(user, team_slug)


async def team_access(request: gr.Request, team_slug: str) -> TeamAccess:
    """The caller's access to ``team_slug``, checked now (membership and role, as the site checks them).

    Raises ``gr.Error`` for an ended session or a team the caller is not a member of; every handler
    calls this first, with the slug from its ``gr.State``.
    """
    user = await current_user(request)
    try:
        return await _resolve_access(user, str(team_slug or ""))
    except Http404:
        raise refusal("No such team: open the playground from your team's pages.") from None


def refuse(error: Exception) -> gr.Error:
    """A permission or existence error as the message a person sees (the same for 'absent' and 'not yours')."""
    if isinstance(error, PermissionDenied):
        return refusal(str(error) or "Your role does not allow this.")
    return refusal("That model does not exist or you may not use it.")


@sync_to_async
def _team_names(user: Any) -> list[str]:
    return [f"{markdown_text(team.name)} (/t/{team.slug}/)" for team in teams_of(user)]


async def describe_session(request: gr.Request) -> str:
    user = await current_user(request)
    teams = await _team_names(user)
    listed = ", ".join(teams) if teams else "none yet"
    return f"Signed in as **{markdown_text(user.get_username())}**. Teams you can work in: {listed}."


def page_params(request: gr.Request) -> tuple[str, str]:
    """The team slug and view named in the page's address (``?team=acme&view=arena``)."""
    params = dict(request.query_params) if request is not None else {}
    view = params.get("view", VIEWS[0])
    return str(params.get("team", "")), view if view in VIEWS else VIEWS[0]


def build_playground() -> gr.Blocks:
    from serving_app.ui.arena import build_arena
    from serving_app.ui.compare import build_compare

    with gr.Blocks(title="Atelier playground", analytics_enabled=False) as blocks:
        team = gr.State("")
        session = gr.Markdown(elem_id="session", visible=False)
        with gr.Tabs(elem_id="views") as tabs:
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                compare_ready = build_compare(team)
            with gr.Tab("Arena", id="arena", elem_id="tab-arena"):
                arena_ready = build_arena(team)

        def on_load(request: gr.Request) -> tuple[str, Any]:
            slug, view = page_params(request)
            return slug, gr.Tabs(selected=view)

        blocks.load(describe_session, inputs=None, outputs=session, api_name="whoami")
        loaded = blocks.load(on_load, inputs=None, outputs=[team, tabs], api_name=False)
        # Each view fills its pickers once the team is known.
        compare_ready(loaded)
        arena_ready(loaded)
    return blocks

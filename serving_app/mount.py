"""Where the Gradio playground is mounted, and the addresses the site's pages frame (no Gradio import here)."""

from __future__ import annotations

from urllib.parse import urlencode

# studio/asgi.py mounts the Gradio app here; the site's pages frame it.
PLAYGROUND_PATH = "/play"
# The views a page can open (``/play/?team=<slug>&view=arena``); the first is the default.
VIEWS = ("compare", "arena")


def frame_url(team_slug: str, view: str, **params: str) -> str:
    """The address a site page frames to show ``view`` of the playground for ``team_slug``."""
    return f"{PLAYGROUND_PATH}/?{urlencode({'team': team_slug, 'view': view, **params})}"

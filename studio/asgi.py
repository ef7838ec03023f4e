"""The one ASGI app: a FastAPI outer app, Gradio mounted at /play/, Django at /.

Run with ``python -m studio.serve`` (uvicorn with the studio's flags). Gradio authenticates through the Django session
(``auth_dependency``), the parent app installs Starlette's CORS middleware with an explicit
allow-list (otherwise Gradio reflects any origin), and state-changing requests to /play/ from a
foreign origin are refused because Gradio has no CSRF token of its own. Every /play/ response gets a
Content-Security-Policy and framing headers, and Gradio's file routes are closed (studio/play_security.py).
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()  # sets Django up before anything imports models

import gradio as gr  # noqa: E402
from django.conf import settings  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from starlette.middleware.cors import CORSMiddleware  # noqa: E402

from serving_app.mount import PLAYGROUND_PATH  # noqa: E402
from serving_app.playground import THEME, build_playground, gradio_username  # noqa: E402
from studio.origin import SameOriginMiddleware  # noqa: E402
from studio.play_security import PlaygroundSecurityMiddleware  # noqa: E402


def build_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.CORS_ALLOWED_ORIGINS,
        allow_credentials=True,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "Authorization"],
    )
    app.add_middleware(
        SameOriginMiddleware, protected_prefix=PLAYGROUND_PATH, trusted_origins=settings.CORS_ALLOWED_ORIGINS
    )
    # Outermost: Gradio's file routes are closed before anything else runs, and every /play/ response
    # (refusals included) carries the CSP, framing and nosniff headers.
    app.add_middleware(PlaygroundSecurityMiddleware, prefix=PLAYGROUND_PATH)
    app = gr.mount_gradio_app(
        app,
        build_playground(),
        path=PLAYGROUND_PATH,
        auth_dependency=gradio_username,
        theme=THEME,
        footer_links=[],
        ssr_mode=False,
        mcp_server=False,
        # Only gr.Error messages (written for people) reach the page; anything unexpected stays in the log.
        show_error=False,
    )
    app.mount("/", django_app)
    return app


app = build_app()
# Everything imported and built so far lives as long as the process: out of the collector's way, so that a
# collection triggered while answers stream no longer walks Django's, Gradio's and pydantic's objects (a full
# one walks every object the process holds, and every stream in flight waits for it).
gc.freeze()

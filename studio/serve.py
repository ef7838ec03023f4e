"""Start the web server with the studio's flags: ``python -m studio.serve [--host H] [--port P]``.

The one way the studio's ASGI app is served (``make run``, compose, the tests' live server), so that
every deployment gets the same trust decision about forwarded headers. uvicorn on its own believes
``X-Forwarded-For`` from 127.0.0.1: any loopback client could then pick the address that django-axes
locks out and the audit trail records. Here forwarded headers are honoured only from the proxies named
in ``ATELIER_TRUSTED_PROXIES`` (``settings.TRUSTED_PROXIES``), and ignored entirely when none is named.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import uvicorn

DEFAULT_APP = "studio.asgi:app"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m studio.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--app", default=DEFAULT_APP, help=f"the ASGI app as MODULE:ATTR (default: {DEFAULT_APP})")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (Gradio's queue is per process)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level (default: info)")
    return parser.parse_args(argv)


def proxy_options(trusted_proxies: Sequence[str]) -> dict[str, Any]:
    """uvicorn's forwarded-header options: on only for the named proxies, off when none is named."""
    if not trusted_proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(trusted_proxies)}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
    from django.conf import settings  # read once here; the app itself is imported by uvicorn

    uvicorn.run(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        **proxy_options(settings.TRUSTED_PROXIES),
    )


if __name__ == "__main__":
    main()

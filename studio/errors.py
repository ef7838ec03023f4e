"""The pages a browser gets for a request Django refuses before any view runs.

Django answers a refused request (a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``, too many form fields, a
forged host) with a bare "Bad Request (400)". The studio's pages say what was wrong and what to do, and a
body that is too large is a 413 (as the API answers), not a 400.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler400``: a 413 for a body over the limit, otherwise a 400 naming the reason where it is known."""
    if isinstance(exception, RequestDataTooBig):
        limit = filesizeformat(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        reason = (
            f"What you sent is larger than the studio accepts in a form ({limit}, not counting uploaded files). "
            "Shorten the text, or upload it as a file where the page offers one."
        )
        return render(request, "400.html", {"title": "Too large", "reason": reason}, status=413)
    if isinstance(exception, TooManyFieldsSent):
        reason = f"The form had more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} fields. Send fewer at a time."
    else:
        reason = "The studio could not read this request. Reload the page and try again."
    return render(request, "400.html", {"title": "Bad request", "reason": reason}, status=400)

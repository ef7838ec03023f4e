"""What a team API key may call: the scopes belong to the app that serves them, not to accounts.

accounts sits under every other app and imports none of them (import-linter's layers contract). A team API
key, though, is scoped to the serving app's deployments, and the key pages and API (here) show and set them.
So the serving app registers, when it loads, how to list the scopes a team's keys may be given and the ones a
key has (``register``); the pages and API of accounts ask through ``choices`` and ``of_key``. Giving a key its
scopes at creation uses the key's reverse relation (``key.deployments``), which needs no import either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet

if TYPE_CHECKING:
    from accounts.models import TeamAPIKey
    from accounts.permissions import TeamAccess


@dataclass(frozen=True)
class KeyScopes:
    """How the serving app answers for its scopes (deployments)."""

    choices: Callable[[TeamAccess], QuerySet[Any]]  # what this person may scope a team's keys to
    of_key: Callable[[TeamAPIKey], QuerySet[Any]]  # what one key may call


_provider: KeyScopes | None = None


def register(scopes: KeyScopes) -> None:
    """Called once by the app that owns the scopes (``serving_app.apps``)."""
    global _provider
    _provider = scopes


def _scopes() -> KeyScopes:
    if _provider is None:
        raise ImproperlyConfigured("No app registered the scopes of team API keys (is serving_app installed?).")
    return _provider


def choices(access: TeamAccess) -> QuerySet[Any]:
    """The deployments ``access`` may let a team key call."""
    return _scopes().choices(access)


def of_key(key: TeamAPIKey) -> QuerySet[Any]:
    """The deployments ``key`` may call."""
    return _scopes().of_key(key)

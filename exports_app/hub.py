"""Pushing an export's files to a Hugging Face Hub repository with the team's token.

The token is stored encrypted (``tools_app.secrets``, the key in ``ATELIER_SECRETS_KEY``), decrypted only here,
in the worker, for the push; it is never logged, shown, or written into an error message.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from accounts.models import Team
from exports_app.models import ExportSettings
from tools_app import secrets

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class PushError(RuntimeError):
    """The push failed; the message says why and what to do (no secret in it)."""


def has_token(team: Team) -> bool:
    return ExportSettings.objects.for_team(team).filter(hub_token__isnull=False).exists()


def set_token(team: Team, token: str | None) -> None:
    """Save (encrypted) or, with None, remove the team's Hub token."""
    value = secrets.encrypt_json(token) if token else None
    ExportSettings.objects.for_team(team).update_or_create(
        team=team, defaults={"hub_token": value, "hub_token_set_at": timezone.now() if token else None}
    )


def _token(team: Team) -> str:
    row = ExportSettings.objects.for_team(team).filter(hub_token__isnull=False).first()
    if row is None or row.hub_token is None:
        raise PushError("The team has no Hugging Face token: an owner or admin sets it in the export settings.")
    try:
        return str(secrets.decrypt_json(row.hub_token))
    except secrets.InvalidToken:
        raise PushError("The saved Hub token cannot be decrypted (the secrets key changed): set it again.") from None


def push(*, team: Team, repo_id: str, private: bool, files: list[tuple[Path | bytes, str]], message: str) -> str:
    """Create ``repo_id`` if needed and commit ``files`` ((file or contents, path in the repository)) to it.

    Returns the commit's URL; raises ``PushError`` with a message a person can act on.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=settings.HF_ENDPOINT or None, token=_token(team))
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(source) if isinstance(source, Path) else source)
        for source, name in files
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo_id, operations=operations, commit_message=message, repo_type="model")
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PushError(
                f"The Hub refused the push to {repo_id} ({status}): the team's token must have write access to it "
                "(a fine-grained token with 'write' on that namespace)."
            ) from None
        raise PushError(f"The Hub answered {status or 'an error'} to the push to {repo_id}: try again later.") from None
    except Exception as error:  # the HTTP client's connection errors (httpx2) share no base class with OSError
        endpoint = settings.HF_ENDPOINT or "huggingface.co"
        raise PushError(
            f"The studio could not reach the Hub ({endpoint}): {error.__class__.__name__}. Without internet, download "
            "the export instead."
        ) from None
    return str(commit.commit_url)

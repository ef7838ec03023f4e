"""Tool secrets at rest (tools_app/secrets.py): where the key comes from, and rotating it."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import Team
from tests.factories import sample_tool
from tools_app import secrets, services
from tools_app.models import Tool


def test_embedded_default_generates_a_private_key_once(settings: Any, tmp_path: Path) -> None:
    settings.SECRETS_KEYS, settings.DATA_DIR = [], tmp_path
    token = secrets.encrypt_json({"X-Token": "t"})
    key_file = tmp_path / secrets.KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert secrets.decrypt_json(token) == {"X-Token": "t"}
    assert key_file.read_bytes() == key  # reused, not regenerated
    assert Fernet(key).decrypt(token) == b'{"X-Token":"t"}'
    assert list(tmp_path.iterdir()) == [key_file]  # no temporary file left behind


def test_configured_key_is_used_and_no_key_file_is_written(settings: Any, tmp_path: Path) -> None:
    key = Fernet.generate_key()
    settings.SECRETS_KEYS, settings.DATA_DIR = [key.decode()], tmp_path
    token = secrets.encrypt_json("postgresql://r:pw@db/sales")
    assert Fernet(key).decrypt(token) == b'"postgresql://r:pw@db/sales"'
    assert not (tmp_path / secrets.KEY_FILE_NAME).exists()


def test_a_secret_from_another_key_does_not_open(settings: Any) -> None:
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    token = secrets.encrypt_json("x")
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(secrets.InvalidToken):
        secrets.decrypt_json(token)


@pytest.fixture
def tool_with_secret(acme: Team, alice: Any, settings: Any) -> tuple[Tool, str]:
    old = Fernet.generate_key().decode()
    settings.SECRETS_KEYS = [old]
    tool = sample_tool(acme, alice)
    Tool.objects.for_team(acme).filter(pk=tool.pk).update(secret=secrets.encrypt_json({"X-Token": "t"}))
    return tool, old


def test_rotation_reencrypts_every_secret_with_the_new_key(
    acme: Team, settings: Any, tool_with_secret: tuple[Tool, str]
) -> None:
    tool, old = tool_with_secret
    new = Fernet.generate_key().decode()
    settings.SECRETS_KEYS = [new, old]
    call_command("rotate_tool_secrets")
    settings.SECRETS_KEYS = [new]
    assert secrets.decrypt_json(Tool.objects.for_team(acme).get(pk=tool.pk).secret) == {"X-Token": "t"}


def test_rotation_names_the_tools_no_key_opens(acme: Team, settings: Any, tool_with_secret: tuple[Tool, str]) -> None:
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    assert services.reencrypt_secrets() == (0, ["acme/lookup_order"])
    with pytest.raises(CommandError, match="acme/lookup_order"):
        call_command("rotate_tool_secrets")


def test_malformed_key_stops_start_up_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from studio.settings import _fernet_keys

    monkeypatch.setenv("ATELIER_SECRETS_KEY", f"{Fernet.generate_key().decode()},not-a-key-SECRET")
    with pytest.raises(ImproperlyConfigured, match="key 2 is not a Fernet key") as raised:
        _fernet_keys("ATELIER_SECRETS_KEY")
    assert "not-a-key-SECRET" not in str(raised.value)

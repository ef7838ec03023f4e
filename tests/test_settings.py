"""Settings: env helpers fail loudly, and production mode passes Django's deployment checklist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from studio.settings import env_bool, env_int, env_list

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = {
    "ATELIER_PRODUCTION": "1",
    "SECRET_KEY": "k3y-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMN",
    "ALLOWED_HOSTS": "atelier.example.com",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/atelier",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/14",
}


def manage(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return python("manage.py", *args, env=env, tmp_path=tmp_path)


def python(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """This Python, in a new process, with the studio's data folder in ``tmp_path``."""
    base = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ATELIER_PRODUCTION")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**base, "ATELIER_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_in_production_mode_has_no_warnings(tmp_path: Path) -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_mode_refuses_to_start_without(missing: str, tmp_path: Path) -> None:
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
    result = manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert f"{missing} is required when ATELIER_PRODUCTION=1" in result.stderr


READ_SECRET_KEY = "import studio.settings; print(studio.settings.SECRET_KEY)"


def test_embedded_default_generates_and_keeps_a_secret_key(tmp_path: Path) -> None:
    """Two starts of the settings (what every process of the studio reads first) share one generated key."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    first = python("-c", READ_SECRET_KEY, env=env, tmp_path=tmp_path)
    key = (tmp_path / "secret_key").read_text()
    assert len(key) >= 50
    second = python("-c", READ_SECRET_KEY, env=env, tmp_path=tmp_path)
    assert first.stdout.strip() == second.stdout.strip() == key
    assert (tmp_path / "secret_key").read_text() == key


def test_malformed_boolean_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG='maybe' is not a boolean"):
        env_bool("SOME_FLAG", False)


def test_malformed_integer_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_LIMIT", "12MB")
    with pytest.raises(ImproperlyConfigured, match="SOME_LIMIT='12MB' is not an integer"):
        env_int("SOME_LIMIT", 1)
    monkeypatch.setenv("SOME_LIMIT", "-3")
    with pytest.raises(ImproperlyConfigured, match="below the minimum of 0"):
        env_int("SOME_LIMIT", 1, minimum=0)


def test_lists_drop_blank_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_HOSTS", "a.example, ,b.example,")
    assert env_list("SOME_HOSTS", []) == ["a.example", "b.example"]

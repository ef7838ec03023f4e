"""Tool secrets at rest: an HTTP tool's secret headers and a SQL tool's DSN, encrypted with Fernet.

The key comes from ``ATELIER_SECRETS_KEY`` (``settings.SECRETS_KEYS``: the first key encrypts, every key decrypts,
so a rotation lists the new key first and the old one after it) or, for the embedded default, from
``DATA_DIR/secrets.key``, generated once with mode 0600. A database dump alone then reveals no secret; the web
process that saves a secret and the tools worker that uses it must share the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from django.conf import settings

from tools_app.sandbox import vault
from tools_app.sandbox.vault import KEY_FILE_NAME

__all__ = ["KEY_FILE_NAME", "InvalidToken", "decrypt_json", "encrypt_json", "rotate"]


def encrypt_json(value: Any) -> bytes:
    """``value`` as JSON, encrypted with the current key (a Fernet token: authenticated, timestamped)."""
    return _box().encrypt(json.dumps(value, separators=(",", ":")).encode())


def decrypt_json(token: bytes | memoryview) -> Any:
    """The value ``encrypt_json`` encrypted; ``InvalidToken`` when no configured key opens it."""
    return vault.decrypt_json(_box(), bytes(token))


def rotate(token: bytes | memoryview) -> bytes:
    """The same secret re-encrypted with the current (first) key; ``InvalidToken`` when no key opens it."""
    return _box().rotate(bytes(token))


def _box() -> MultiFernet:
    return vault.box(settings.SECRETS_KEYS or [vault.key_file(Path(settings.DATA_DIR) / KEY_FILE_NAME)])

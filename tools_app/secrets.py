"""Tool secrets at rest: an HTTP tool's secret headers and a SQL tool's DSN, encrypted with Fernet.

The key comes from ``ATELIER_SECRETS_KEY`` (``settings.SECRETS_KEYS``: the first key encrypts, every key decrypts,
so a rotation lists the new key first and the old one after it) or, for the embedded default, from
``DATA_DIR/secrets.key``, generated once with mode 0600. A database dump alone then reveals no secret; the web
process that saves a secret and the tools worker that uses it must share the key.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

KEY_FILE_NAME = "secrets.key"

__all__ = ["InvalidToken", "decrypt_json", "encrypt_json", "rotate"]


def encrypt_json(value: Any) -> bytes:
    """``value`` as JSON, encrypted with the current key (a Fernet token: authenticated, timestamped)."""
    return _box().encrypt(json.dumps(value, separators=(",", ":")).encode())


def decrypt_json(token: bytes | memoryview) -> Any:
    """The value ``encrypt_json`` encrypted; ``InvalidToken`` when no configured key opens it."""
    return json.loads(_box().decrypt(bytes(token)))


def rotate(token: bytes | memoryview) -> bytes:
    """The same secret re-encrypted with the current (first) key; ``InvalidToken`` when no key opens it."""
    return _box().rotate(bytes(token))


def _box() -> MultiFernet:
    keys = [key.encode() for key in settings.SECRETS_KEYS] or [_key_file(Path(settings.DATA_DIR) / KEY_FILE_NAME)]
    return MultiFernet([Fernet(key) for key in keys])


def _key_file(path: Path) -> bytes:
    """The key stored at ``path``, generated there first if absent (readable by this user only).

    The key is written to a private temporary file and linked into place, so concurrent first starts (web and
    workers) agree on one key and nobody ever reads a half-written file.
    """
    if not path.exists():
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secrets-key-")  # mode 0600
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(Fernet.generate_key())
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process generated it first: use theirs
        finally:
            os.unlink(temporary)
    return path.read_bytes().strip()

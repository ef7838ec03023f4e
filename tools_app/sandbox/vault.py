"""The Fernet keys that open tool secrets, without Django: the studio (``tools_app.secrets``) and the tools worker
(``tools_app.sandbox.worker``) build the same box from the same keys.

Keys are given as a list (the first encrypts, every one decrypts, so a rotation lists the new key first) or, for the
embedded default, read from a key file generated once with mode 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE_NAME = "secrets.key"

__all__ = ["KEY_FILE_NAME", "InvalidToken", "box", "decrypt_json", "key_file"]


def box(keys: Sequence[str | bytes]) -> MultiFernet:
    """What encrypts with ``keys[0]`` and decrypts with any of ``keys`` (``ValueError`` for a malformed key)."""
    if not keys:
        raise ValueError("no Fernet key given")
    return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])


def decrypt_json(secrets_box: MultiFernet, token: bytes | str) -> Any:
    """The JSON value inside ``token``; ``InvalidToken`` when none of the box's keys opens it."""
    return json.loads(secrets_box.decrypt(token.encode() if isinstance(token, str) else token))


def key_file(path: Path) -> bytes:
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

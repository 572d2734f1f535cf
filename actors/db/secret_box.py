"""Encrypts the platform's secrets for a shared database (Fernet: AES-128-CBC + HMAC-SHA256), with a key the
operator provides in DCL_SECRET_KEY or in a 0600 file named by DCL_SECRET_KEY_FILE (a mounted secret)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from dcl_core import errors, secret_files

HOW_TO_MAKE_A_KEY = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


class SecretKeyError(errors.InvalidInput):
    """No key, a malformed one, a key file others can read, or a key that does not open the database's secrets."""


class SecretBox:
    def __init__(self, key: str | bytes):
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretKeyError(
                f"{secret_files.SECRET_KEY_ENV} is not a Fernet key (32 bytes, URL-safe base64); "
                f"make one with: {HOW_TO_MAKE_A_KEY}"
            ) from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SecretBox:
        environ = os.environ if environ is None else environ
        key = environ.get(secret_files.SECRET_KEY_ENV)
        if key:
            return cls(key.strip())
        path = environ.get(secret_files.SECRET_KEY_FILE_ENV)
        if not path:
            raise SecretKeyError(
                f"a platform on PostgreSQL keeps its secrets in the database, encrypted: give every platform node's "
                f"Ray processes {secret_files.SECRET_KEY_ENV} or {secret_files.SECRET_KEY_FILE_ENV} (a 0600 file); "
                f"make a key with: {HOW_TO_MAKE_A_KEY}"
            )
        try:
            mode = Path(path).stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SecretKeyError(f"{path} ({secret_files.SECRET_KEY_FILE_ENV}) is readable by others: chmod 600 it")
            return cls(Path(path).read_text().strip())
        except OSError as exc:
            raise SecretKeyError(f"{secret_files.SECRET_KEY_FILE_ENV}={path} cannot be read: {exc.strerror}") from None

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "the secret key does not open the secrets in the database (another platform's key, "
                f"or {secret_files.SECRET_KEY_ENV} changed)"
            ) from None

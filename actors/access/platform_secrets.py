"""Where the platform's secrets live: the JWT signing secret, each buyer cluster's Ray auth token and the bootstrap
admin's credentials. On SQLite, files in the head's state dir (as always); on PostgreSQL, rows of the shared
database, encrypted with the operator's key, so the control-plane actors can run on any platform node."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from actors.access import auth, cluster_files
from actors.db import database, schema, secret_box, store
from actors.settings import PlatformSettings
from dcl_core import secret_files

logger = logging.getLogger(__name__)

JWT_SECRET = "jwt-secret"
ADMIN_CREDENTIALS = "admin-credentials"
CLUSTER_TOKEN_PREFIX = "cluster-token/"


class Secrets(Protocol):
    async def signing_secret(self) -> str:
        """The JWT signing secret (DCLUSTER_JWT_SECRET when set), made once on first start."""

    async def save_cluster_token(self, cluster_id: str, token: str) -> None: ...

    async def cluster_token(self, cluster_id: str) -> str: ...

    async def cluster_token_file(self, cluster_id: str) -> Path:
        """A 0600 file on this node holding the cluster's token (what Ray's AWS launcher config names)."""

    async def save_admin_credentials(self, credentials: dict[str, Any]) -> None:
        """The bootstrap admin's credentials, for the operator: admin_credentials.json in the state dir."""

    async def restore_admin_credentials_file(self) -> None:
        """Writes admin_credentials.json on this node when it is missing and the credentials are kept elsewhere."""


class FileSecrets:
    """One node (SQLite): the secrets are 0600 files in the state dir beside the database."""

    def __init__(self, settings: PlatformSettings):
        self._settings = settings

    async def signing_secret(self) -> str:
        return auth.load_or_create_jwt_secret(self._settings.state_dir)

    async def save_cluster_token(self, cluster_id: str, token: str) -> None:
        cluster_files.write_cluster_token(self._settings.clusters_dir / cluster_id, token)

    async def cluster_token(self, cluster_id: str) -> str:
        return cluster_files.read_cluster_token(self._settings.clusters_dir / cluster_id)

    async def cluster_token_file(self, cluster_id: str) -> Path:
        return self._settings.clusters_dir / cluster_id / cluster_files.TOKEN_FILE

    async def save_admin_credentials(self, credentials: dict[str, Any]) -> None:
        secret_files.write_secret_file(self._settings.admin_credentials_path, json.dumps(credentials))

    async def restore_admin_credentials_file(self) -> None:
        pass  # the file is the only copy


class SecretRows(database.Database):
    """The secrets table: each secret is written once (the first writer wins, on every node) and never changed."""

    async def put_once(self, name: str, ciphertext: str, now: float) -> str:
        """Stores ciphertext under name unless a value is there already; returns the value that is kept."""
        await self.write(
            store.upsert(self, schema.secrets)
            .values(name=name, ciphertext=ciphertext, created_at=now)
            .on_conflict_do_nothing(index_elements=[schema.secrets.c.name])
        )
        kept = await self.get(name)
        if kept is None:
            raise RuntimeError(f"secret {name} was written but cannot be read back")
        return kept

    async def get(self, name: str) -> str | None:
        row = await self.fetch_one(sa.select(schema.secrets.c.ciphertext).where(schema.secrets.c.name == name))
        return str(row["ciphertext"]) if row else None


class DatabaseSecrets:
    """A platform on several nodes (PostgreSQL): the secrets are rows of the shared database, sealed with the
    operator's key; nothing is read from the local disk. The key is read on first use, so a missing one is a
    start error the health check names, not a crash."""

    def __init__(
        self,
        rows: SecretRows,
        settings: PlatformSettings,
        *,
        box: Callable[[], secret_box.SecretBox] = secret_box.SecretBox.from_environment,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ):
        self._rows = rows
        self._settings = settings
        self._make_box = box
        self._box: secret_box.SecretBox | None = None
        self._clock = clock
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._cache: dict[str, str] = {}  # secrets never change once written

    def _sealer(self) -> secret_box.SecretBox:
        if self._box is None:
            self._box = self._make_box()
        return self._box

    async def _get_or_create(self, name: str, make: Callable[[], str]) -> str:
        if name not in self._cache:
            sealed = await self._rows.get(name)
            if sealed is None:
                sealed = await self._rows.put_once(name, self._sealer().seal(make()), self._clock())
            self._cache[name] = self._sealer().open(sealed)
        return self._cache[name]

    async def _get(self, name: str) -> str | None:
        if name not in self._cache:
            sealed = await self._rows.get(name)
            if sealed is None:
                return None
            self._cache[name] = self._sealer().open(sealed)
        return self._cache[name]

    async def signing_secret(self) -> str:
        if self._environ.get(auth.JWT_SECRET_ENV):  # the operator's own secret, checked as on one node
            return auth.load_or_create_jwt_secret(self._settings.state_dir, self._environ)
        return await self._get_or_create(JWT_SECRET, lambda: secrets.token_urlsafe(48))

    async def save_cluster_token(self, cluster_id: str, token: str) -> None:
        await self._get_or_create(CLUSTER_TOKEN_PREFIX + cluster_id, lambda: token)

    async def cluster_token(self, cluster_id: str) -> str:
        token = await self._get(CLUSTER_TOKEN_PREFIX + cluster_id)
        if token is None:
            raise FileNotFoundError(f"no Ray auth token of cluster {cluster_id} in the database")
        return token

    async def cluster_token_file(self, cluster_id: str) -> Path:
        # A private copy on this node's disk, made from the database: scratch, not state.
        path = self._settings.clusters_dir / cluster_id / cluster_files.TOKEN_FILE
        cluster_files.write_cluster_token(path.parent, await self.cluster_token(cluster_id))
        return path

    async def save_admin_credentials(self, credentials: dict[str, Any]) -> None:
        await self._get_or_create(ADMIN_CREDENTIALS, lambda: json.dumps(credentials))
        await self.restore_admin_credentials_file()

    async def restore_admin_credentials_file(self) -> None:
        path = self._settings.admin_credentials_path
        if path.exists():
            return
        credentials = await self._get(ADMIN_CREDENTIALS)
        if credentials is None:
            return
        try:
            secret_files.ensure_private_dir(path.parent)
            secret_files.write_secret_file(path, credentials)
            logger.info("wrote the bootstrap admin's credentials to %s on this node", path)
        except OSError as exc:  # the operator can still read them with the key; the platform runs on
            logger.warning("could not write %s on this node: %s", path, exc)


def for_settings(settings: PlatformSettings) -> Secrets:
    """Files beside a SQLite database; encrypted rows of a PostgreSQL one."""
    if settings.shared_database:
        return DatabaseSecrets(SecretRows(settings.db_location), settings)
    return FileSecrets(settings)

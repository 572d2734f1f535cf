"""actors.access.platform_secrets and actors.db.secret_box: files on one node (SQLite); sealed rows of a shared
PostgreSQL database, readable by every node that holds the operator's key and by nothing else."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import sqlalchemy as sa

from actors.access import platform_secrets
from actors.db import secret_box
from actors.settings import PlatformSettings
from dcl_core import secret_files

pytestmark = pytest.mark.anyio


@pytest.fixture
def pg_url(postgres_server):
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


def _node(closing, tmp_path, url, name, key):
    """One platform node: its own scratch state dir, the shared database (closed after the test), the
    operator's key."""
    settings = PlatformSettings(state_dir=tmp_path / name, database=url)
    rows = platform_secrets.SecretRows(url)
    closing.push_async_callback(rows.close)
    return platform_secrets.DatabaseSecrets(rows, settings, box=lambda: secret_box.SecretBox(key), environ={})


async def test_sqlite_keeps_the_secrets_in_files_of_the_state_dir_as_before(tmp_path):
    settings = PlatformSettings(state_dir=tmp_path)
    keeper = platform_secrets.for_settings(settings)
    assert isinstance(keeper, platform_secrets.FileSecrets)

    secret = await keeper.signing_secret()
    await keeper.save_cluster_token("c-1", "tok-1")

    secret, token = secret, await keeper.cluster_token("c-1")
    assert (tmp_path / "jwt_secret").read_text().strip() == secret and token == "tok-1"
    assert oct((tmp_path / "clusters" / "c-1" / "ray_auth_token").stat().st_mode & 0o777) == "0o600"


async def test_two_nodes_share_one_signing_secret_and_the_cluster_tokens_through_the_database(
    tmp_path, pg_url, closing
):
    key = secret_files.new_secret_key()
    first, second = _node(closing, tmp_path, pg_url, "head", key), _node(closing, tmp_path, pg_url, "member", key)

    a, b = await asyncio.gather(first.signing_secret(), second.signing_secret())
    await first.save_cluster_token("c-1", "the-token")

    a, b, token = a, b, await second.cluster_token("c-1")
    assert a == b and len(a) >= 32 and token == "the-token"
    # Nothing of it on either node's disk.
    assert not (tmp_path / "head").exists() and not (tmp_path / "member").exists()


async def test_the_database_holds_only_ciphertext_and_another_key_cannot_open_it(tmp_path, pg_url, closing):
    owner = _node(closing, tmp_path, pg_url, "head", secret_files.new_secret_key())
    stranger = _node(closing, tmp_path, pg_url, "other", secret_files.new_secret_key())

    secret = await owner.signing_secret()
    await owner.save_cluster_token("c-1", "plain-token-text")
    reader = platform_secrets.SecretRows(pg_url)
    closing.push_async_callback(reader.close)
    rows = await reader.fetch_all(sa.text("SELECT name, ciphertext FROM secrets"))
    with pytest.raises(secret_box.SecretKeyError, match="does not open"):
        await stranger.signing_secret()

    stored = " ".join(r["ciphertext"] for r in rows)
    assert {r["name"] for r in rows} == {platform_secrets.JWT_SECRET, platform_secrets.CLUSTER_TOKEN_PREFIX + "c-1"}
    assert secret not in stored and "plain-token-text" not in stored


async def test_admin_credentials_are_sealed_and_written_on_the_node_that_lacks_them(tmp_path, pg_url, closing):
    key = secret_files.new_secret_key()
    head, member = _node(closing, tmp_path, pg_url, "head", key), _node(closing, tmp_path, pg_url, "member", key)
    credentials = {"username": "admin", "password": "pw-123456"}
    await head.save_admin_credentials(credentials)
    assert json.loads((tmp_path / "head" / "admin_credentials.json").read_text()) == credentials
    await member.restore_admin_credentials_file()  # the registry moved to this node
    path = tmp_path / "member" / "admin_credentials.json"
    assert json.loads(path.read_text()) == credentials and oct(path.stat().st_mode & 0o777) == "0o600"


async def test_a_missing_cluster_token_is_an_os_error_as_a_missing_file_was(tmp_path, pg_url, closing):
    node = _node(closing, tmp_path, pg_url, "head", secret_files.new_secret_key())
    with pytest.raises(FileNotFoundError, match="c-none"):
        await node.cluster_token("c-none")


def test_the_key_comes_from_the_environment_or_a_private_file(tmp_path):
    key = secret_files.new_secret_key()
    box = secret_box.SecretBox.from_environment({secret_files.SECRET_KEY_ENV: key})
    assert box.open(box.seal("x")) == "x"
    path = tmp_path / "key"
    secret_files.write_secret_file(path, key + "\n")
    from_file = secret_box.SecretBox.from_environment({secret_files.SECRET_KEY_FILE_ENV: str(path)})
    assert from_file.open(box.seal("y")) == "y"
    os.chmod(path, 0o644)
    with pytest.raises(secret_box.SecretKeyError, match="readable by others"):
        secret_box.SecretBox.from_environment({secret_files.SECRET_KEY_FILE_ENV: str(path)})


def test_no_key_or_a_malformed_one_is_refused_with_how_to_make_one():
    with pytest.raises(secret_box.SecretKeyError, match="DCL_SECRET_KEY.*Fernet.generate_key"):
        secret_box.SecretBox.from_environment({})
    with pytest.raises(secret_box.SecretKeyError, match="not a Fernet key"):
        secret_box.SecretBox.from_environment({secret_files.SECRET_KEY_ENV: "too-short"})


async def test_a_registry_on_postgresql_without_the_key_does_not_start_and_says_why(
    tmp_path, pg_url, monkeypatch, closing
):
    from actors.db import store
    from actors.machines import registry

    monkeypatch.delenv(secret_files.SECRET_KEY_ENV)
    settings = PlatformSettings(state_dir=tmp_path / "node", database=pg_url, bcrypt_rounds=4)

    db = store.Store(pg_url)
    closing.push_async_callback(db.close)
    with pytest.raises(secret_box.SecretKeyError, match="DCL_SECRET_KEY"):
        await registry.ProviderRegistry(db, settings).start()


async def test_two_registries_on_one_database_sign_each_others_tokens_and_share_the_admin(tmp_path, pg_url, closing):
    """Two nodes' registries (one after the other: an actor that moved) verify each other's tokens; the second
    does not make a second admin, and writes the credentials file on its own node."""
    from actors.access import auth
    from actors.db import store
    from actors.machines import registry

    regs, dbs = [], []
    for name in ("head", "member"):
        db = store.Store(pg_url)
        closing.push_async_callback(db.close)
        dbs.append(db)
        reg = registry.ProviderRegistry(
            db, PlatformSettings(state_dir=tmp_path / name, database=pg_url, bcrypt_rounds=4)
        )
        await reg.start()
        regs.append(reg)
    creds = json.loads((tmp_path / "head" / "admin_credentials.json").read_text())
    token = (await regs[0].login(creds["username"], creds["password"]))["access_token"]
    principal = auth.TokenIssuer(await regs[1].signing_secret()).verify(token)
    admins = await dbs[1].count_accounts(registry.domain.Role.ADMIN)

    assert principal.username == "admin" and admins == 1
    head = json.loads((tmp_path / "head" / "admin_credentials.json").read_text())
    assert json.loads((tmp_path / "member" / "admin_credentials.json").read_text()) == head
    assert not (tmp_path / "head" / "jwt_secret").exists()  # the secret is in the database only

import os
import stat

import jwt
import pytest

from actors.access import auth
from dcl_core import domain, errors


def test_password_hash_and_verify_really_use_bcrypt():
    hasher = auth.PasswordHasher(rounds=4)
    h = hasher.hash("correct horse")
    assert h.startswith("$2b$04$")
    assert hasher.verify("correct horse", h)
    assert not hasher.verify("wrong horse", h)
    assert not hasher.verify("anything", None)  # unknown user: still a full verify, still False


def test_default_rounds_hash_round_trips():
    hasher = auth.PasswordHasher()
    h = hasher.hash("password123")
    assert h.startswith("$2b$12$")
    assert hasher.verify("password123", h)


# Made by passlib 1.7.4 (CryptContext(schemes=["bcrypt"]), bcrypt 4.0.1), the hasher of earlier versions, from the
# test password below: accounts stored then must keep signing in.
PASSLIB_HASHES = {
    4: "$2b$04$4rKaDPgJxn5f7AFieAu67uLxaFEkesIR7Dd90mbfvjyBr3.jw0MFy",
    12: "$2b$12$/p2VhJFzSgPodQ7TfthmQ.0UiSH88iqFiO0amYXhPEJcY1dIuNLky",
}


@pytest.mark.parametrize("rounds", sorted(PASSLIB_HASHES))
def test_hashes_stored_by_passlib_still_verify(rounds):
    hasher = auth.PasswordHasher(rounds=4)
    assert hasher.verify("old-passlib-password", PASSLIB_HASHES[rounds])
    assert not hasher.verify("old-passlib-passwore", PASSLIB_HASHES[rounds])


def test_a_password_longer_than_bcrypt_reads_is_a_domain_error_not_a_crash():
    hasher = auth.PasswordHasher(rounds=4)
    assert hasher.verify("é" * 36, hasher.hash("é" * 36))  # 72 bytes: the most bcrypt reads
    for call in (lambda: hasher.hash("é" * 37), lambda: hasher.verify("x" * 73, None)):
        with pytest.raises(errors.InvalidInput, match="at most 72 bytes"):
            call()


def test_token_round_trip_has_required_claims(clock):
    issuer = auth.TokenIssuer("s" * 48, ttl_s=1800, clock=clock)
    token = issuer.issue(auth.Principal(7, "alice", domain.Role.BUYER))
    claims = jwt.decode(token, "s" * 48, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["sub"] == "7" and claims["role"] == "buyer"
    assert claims["exp"] - claims["iat"] == 1800 and claims["jti"]
    assert issuer.verify(token) == auth.Principal(7, "alice", domain.Role.BUYER)


def test_expired_and_forged_tokens_are_rejected(clock):
    issuer = auth.TokenIssuer("s" * 48, ttl_s=60, clock=clock)
    token = issuer.issue(auth.Principal(1, "a", domain.Role.PROVIDER))
    clock.advance(61)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        issuer.verify(token)
    forged = auth.TokenIssuer("x" * 48, clock=clock).issue(auth.Principal(1, "a", domain.Role.ADMIN))
    with pytest.raises(errors.Unauthenticated, match="invalid"):
        issuer.verify(forged)
    none_alg = jwt.encode({"sub": "1", "role": "admin", "exp": 2e9, "iat": 0, "jti": "x"}, key=None, algorithm="none")
    with pytest.raises(errors.Unauthenticated):
        issuer.verify(none_alg)
    with pytest.raises(errors.Unauthenticated):
        issuer.verify("not-a-jwt")


def test_a_verified_token_is_remembered_until_its_expiry_and_no_longer(clock, monkeypatch):
    issuer = auth.TokenIssuer("s" * 48, ttl_s=60, clock=clock)
    token = issuer.issue(auth.Principal(3, "bob", domain.Role.BUYER))
    assert issuer.verify(token) == auth.Principal(3, "bob", domain.Role.BUYER)
    decoded = []
    monkeypatch.setattr(auth.jwt, "decode", lambda *a, **k: decoded.append(1))  # a second signature check would fail
    assert issuer.verify(token) == auth.Principal(3, "bob", domain.Role.BUYER)
    assert not decoded
    clock.advance(61)  # past exp: the remembered answer is refused exactly as a fresh check would be
    with pytest.raises(errors.Unauthenticated, match="expired"):
        issuer.verify(token)


def test_the_verified_token_cache_is_bounded_and_never_holds_a_failure(clock, monkeypatch):
    decoded = []  # the tokens whose signature was checked: a cached one is not
    decode = jwt.decode
    monkeypatch.setattr(
        jwt, "decode", lambda token, *args, **kwargs: decoded.append(token) or decode(token, *args, **kwargs)
    )
    issuer = auth.TokenIssuer("s" * 48, ttl_s=60, clock=clock, cache_size=3)
    tokens = [issuer.issue(auth.Principal(i, f"u{i}", domain.Role.BUYER)) for i in range(5)]
    for token in tokens:
        issuer.verify(token)
    assert decoded == tokens
    decoded.clear()
    for token in tokens[2:] + tokens[:2]:
        issuer.verify(token)
    assert decoded == tokens[:2]  # the last three were cached; the oldest went out first
    forged = auth.TokenIssuer("x" * 48, clock=clock).issue(auth.Principal(1, "a", domain.Role.ADMIN))
    decoded.clear()
    for _ in range(2):
        with pytest.raises(errors.Unauthenticated, match="invalid"):
            issuer.verify(forged)
    assert decoded == [forged, forged]  # checked each time: a failure is never cached
    # A token signed with another secret is not taken by an issuer that verified it under its own.
    other = auth.TokenIssuer("x" * 48, clock=clock)
    assert other.verify(forged).role is domain.Role.ADMIN
    with pytest.raises(errors.Unauthenticated, match="invalid"):
        auth.TokenIssuer("s" * 48, clock=clock).verify(forged)


def test_secret_file_is_created_once_with_mode_0600(tmp_path):
    first = auth.load_or_create_jwt_secret(tmp_path, environ={})
    path = tmp_path / auth.JWT_SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) >= 48
    assert auth.load_or_create_jwt_secret(tmp_path, environ={}) == first


def test_secret_from_environment_wins_and_must_be_long(tmp_path):
    assert auth.load_or_create_jwt_secret(tmp_path, environ={auth.JWT_SECRET_ENV: "k" * 40}) == "k" * 40
    assert not (tmp_path / auth.JWT_SECRET_FILE).exists()
    with pytest.raises(errors.InvalidInput):
        auth.load_or_create_jwt_secret(tmp_path, environ={auth.JWT_SECRET_ENV: "short"})


def test_login_limiter_blocks_after_ten_failures_per_minute(clock):
    limiter = auth.LoginLimiter(max_failures=10, window_s=60, clock=clock)
    for _ in range(10):
        limiter.check("alice")
        limiter.record_failure("alice")
    with pytest.raises(errors.RateLimited) as caught:
        limiter.check("alice")
    assert 1 <= caught.value.retry_after_s <= 61
    limiter.check("bob")  # other usernames are unaffected
    clock.advance(61)
    limiter.check("alice")

"""Open asyncpg connections and pools to a ``Target`` with errors an operator can act on."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import asyncpg

from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import ConnectionFailed
from pytest_hokmdb.redaction import redact


def explain_connect_error(target: Target, exc: BaseException) -> ConnectionFailed:
    """Map driver/OS errors to one line that names the target (redacted) and what to check."""
    where = target.dsn()
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return ConnectionFailed(
            f"cannot connect to {where}: password authentication failed for user {target.user!r}",
            hint=f"check {target.password_origin or 'the DB_PASSWORD_* variable for this environment'}",
        )
    setup = f"python database/deploy.py --environment {target.environment} --setup"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConnectionFailed(
            f"cannot connect to {where}: database {target.dbname!r} does not exist",
            hint=(f"create it with `{setup}` (or `hokmdb cluster start --environment {target.environment}`)"
                  if target.embedded else "create it, or check DB_NAME"),
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return ConnectionFailed(f"cannot connect to {where}: {redact(str(exc))}", hint="check DB_USER and pg_hba.conf")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ConnectionFailed(
            f"cannot connect to {where}: no answer within {target.connect_timeout_s:g}s",
            hint=f"check {target.address_origin or 'the host and port'} and the firewall; raise database.connect_timeout_s "
                 "if the network is slow",
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectionFailed(
            f"cannot connect to {where}: TLS failed ({redact(str(exc))})",
            hint="check database.sslmode and sslrootcert (the CA that signed the server certificate)",
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailed(
            f"cannot connect to {where}: connection refused",
            hint=f"is the server running on that host and port? They come from {target.address_origin}"
            if target.address_origin else "is the server running on that host and port?",
        )
    if isinstance(exc, OSError):
        return ConnectionFailed(f"cannot connect to {where}: {redact(str(exc))}",
                                hint=f"check {target.address_origin or 'DB_HOST and DB_PORT'}"
                                + (f"; and database.sslmode ({target.sslmode}): the server may not speak TLS"
                                   if target.sslmode not in ("disable", "allow", "prefer") else ""))
    return ConnectionFailed(f"cannot connect to {where}: {redact(str(exc))}")


_CONNECT_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, ssl.SSLError, asyncpg.InterfaceError)


async def _refused_login(target: Target) -> ConnectionFailed | None:
    """Why the server refused ``target``'s password, when its witness (another login to the
    same server, ``Target.witness``) reads in pg_roles that the password is past its VALID
    UNTIL. PostgreSQL tells the client only "password authentication failed" then, and an
    operator told to check the configured password would check one that is right. None when
    there is no witness on this server, it cannot log in either, or no expiry has passed:
    then nothing is known beyond the refusal."""
    witness = target.witness
    if witness is None or witness.user == target.user or (witness.host, witness.port) != (target.host, target.port):
        return None
    timeout = min(witness.connect_timeout_s, 5.0)
    try:
        conn = await asyncpg.connect(**{**witness.asyncpg_kwargs(), "timeout": timeout})  # type: ignore[arg-type]
    except _CONNECT_ERRORS:
        return None
    try:
        # pg_roles (not pg_authid) is readable by every role.
        row = await asyncio.wait_for(conn.fetchrow(
            "SELECT rolvaliduntil AS valid_until FROM pg_roles WHERE rolname = $1 AND rolvaliduntil < now()",
            target.user), timeout)
    except _CONNECT_ERRORS:
        return None
    finally:
        conn.terminate()
    if row is None:
        return None
    from pytest_hokmdb.db.scratch import quote_ident  # the one that always quotes, for a statement to copy

    expired = row["valid_until"].astimezone(datetime.UTC)
    return ConnectionFailed(
        f"cannot connect to {target.dsn()}: the password of role {target.user!r} expired on {expired:%Y-%m-%d %H:%M} "
        "UTC (VALID UNTIL is in the past); PostgreSQL refuses it at login as \"password authentication failed\", "
        "however right the password is",
        hint=f"run ALTER ROLE {quote_ident(target.user)} VALID UNTIL 'infinity' (as a superuser or a role with "
             "CREATEROLE), or rotate the password and set a new expiry")


async def _explain(target: Target, exc: BaseException) -> ConnectionFailed:
    if isinstance(exc, asyncpg.InvalidPasswordError):
        known = await _refused_login(target)
        if known is not None:
            return known
    return explain_connect_error(target, exc)


async def connect(target: Target) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
    except _CONNECT_ERRORS as exc:
        failure: BaseException = exc  # explained outside the handler: no "during handling of the above"
    raise await _explain(target, failure) from None


async def create_pool(target: Target, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(min_size=min_size, max_size=max_size, **target.asyncpg_kwargs())  # type: ignore[arg-type]
    except _CONNECT_ERRORS as exc:
        failure: BaseException = exc
    else:
        assert pool is not None
        return pool
    raise await _explain(target, failure) from None

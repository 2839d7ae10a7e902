"""Open asyncpg connections and pools to a ``Target`` with errors an operator can act on."""

from __future__ import annotations

import asyncio
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


async def connect(target: Target) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
    except _CONNECT_ERRORS as exc:
        raise explain_connect_error(target, exc) from None


async def create_pool(target: Target, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(min_size=min_size, max_size=max_size, **target.asyncpg_kwargs())  # type: ignore[arg-type]
    except _CONNECT_ERRORS as exc:
        raise explain_connect_error(target, exc) from None
    assert pool is not None
    return pool

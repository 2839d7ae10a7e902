"""Rotate a role's password without the clear password ever reaching the server.

The operators' documentation rotated passwords with ``ALTER ROLE ... PASSWORD 'clear'`` typed
on a command line: the password then sits in the shell history, the process listing, the
server log (``log_statement``) and ``pg_stat_activity``. Here the new password is generated
in this process, turned into a SCRAM-SHA-256 verifier by libpq itself
(``PQencryptPasswordConn`` through psycopg), and the role sets its *own* password to that
verifier (``ALTER ROLE CURRENT_USER``: no superuser or CREATEROLE needed, on any server).
A login with the new password proves it before anything is stored; if it fails, the old
password is set back the same way. Sessions already open are not touched (PostgreSQL checks
a password only at login).

Where the new password goes is where the config reads it from: the cluster's state file for
a server hokmdb runs (its generated passwords), the ``.env.database`` file for development
and testing when the config reads a variable, and, for staging and production, nowhere: the
operator gets it once (``--show`` or ``--to-file``) with the variable to set in the secret
store. Production needs approval, as a deploy does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.config.loader import ENV_FILE_NAME
from pytest_hokmdb.db import connect, resolve_target
from pytest_hokmdb.db.resolve import (
    password_store,
    resolve_monitor_target,
    resolve_owner_target,
    runs_local_server,
)
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.db.topology import refresh_local_pooler
from pytest_hokmdb.errors import ConfigError, HokmdbError, Refused
from pytest_hokmdb.redaction import register_secret

log = logging.getLogger("hokmdb.rotation")

Role = Literal["app", "owner", "monitor"]
_PASSWORD_KEY = {"app": "database.password", "owner": "database.owner_password", "monitor": "database.monitor_password"}


@dataclass(frozen=True)
class Rotation:
    role: str
    target: str  # the server, as a redacted DSN
    stored: str  # where the new password was put, or what the operator must do with it
    password: str | None = None  # returned only when the operator asked to see it (--show)


def _libpq_kwargs(target: Target) -> dict[str, object]:
    kwargs: dict[str, object] = {"host": target.host, "port": target.port, "dbname": target.dbname, "user": target.user,
                                 "password": target.password or "", "sslmode": target.sslmode,
                                 "connect_timeout": max(1, int(target.connect_timeout_s)), "application_name": "hokmdb-rotate"}
    if target.sslrootcert is not None:
        kwargs["sslrootcert"] = str(target.sslrootcert)
    return kwargs


def _set_own_password(target: Target, password: str) -> None:
    """As the role itself: ALTER ROLE CURRENT_USER PASSWORD '<SCRAM verifier computed by libpq>'."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(**_libpq_kwargs(target), autocommit=True) as conn:  # type: ignore[arg-type]
            # The monitoring role logs in with `default_transaction_read_only = on` (provision_monitor,
            # README "Monitoring connection"), under which PostgreSQL refuses ALTER ROLE. That
            # default guards the data against a monitor's mistakes; it is not a permission: any
            # role may set it off for its own session (a user-level setting) and may change its own
            # password. Only this session, which runs the one statement below and closes, lifts it;
            # the role's setting and every other session of it stay read-only.
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            verifier = conn.pgconn.encrypt_password(password.encode(), target.user.encode(), b"scram-sha-256")
            conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(sql.Literal(verifier.decode())))
    except psycopg.Error as exc:
        raise HokmdbError(f"cannot set the password of role {target.user} on {target.dsn()}: "
                          f"{str(exc).strip().splitlines()[0]}") from None


def _variable(loaded: LoadedConfig, role: Role) -> str | None:
    """The variable the config reads this role's password from, if it reads one."""
    names = loaded.sources.get(_PASSWORD_KEY[role], ())
    return names[0] if names else None


def check_private_destination(path: Path) -> None:
    """Refuse (exit 4), before anything changes, a place where another account could read,
    swap or own the secret: a symlink, something that is not a regular file, a file of another
    account, a directory others may write to without the sticky bit (they could replace the
    file after us), or a directory that does not exist."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        directory = parent.stat()
    except OSError as exc:
        raise Refused(f"--to-file {path}: its directory {parent} cannot be used ({exc.strerror})",
                      hint="name a file in an existing directory only you can write to") from None
    if not os.path.isdir(parent):
        raise Refused(f"--to-file {path}: {parent} is not a directory")
    if directory.st_mode & 0o022 and not directory.st_mode & 0o1000:
        raise Refused(f"--to-file {path}: {parent} may be written by other accounts (mode {directory.st_mode & 0o7777:o}, "
                      "no sticky bit), so one of them could replace the password file",
                      hint="name a file in a directory only you can write to (e.g. under your home, mode 0700)")
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(existing.st_mode):
        raise Refused(f"--to-file {path} is a symbolic link; hokmdb writes a secret only to a file it creates itself",
                      hint="remove the link or name another file")
    if not stat.S_ISREG(existing.st_mode):
        raise Refused(f"--to-file {path} exists and is not a regular file")
    if existing.st_uid != os.geteuid():
        raise Refused(f"--to-file {path} belongs to another account (uid {existing.st_uid}); hokmdb does not write "
                      "a secret over someone else's file", hint="name a file of your own")


def _write_private(path: Path, text: str) -> Path:
    """Write a file only its owner reads, atomically: a temporary file of a random name created
    exclusively (0600 from the first byte: no one can have it open or linked beforehand), synced,
    then renamed over ``path`` (a rename replaces a link, never follows it). Returns ``path``
    after checking that it is now this account's regular file with mode 0600."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    written = os.lstat(path)
    if not stat.S_ISREG(written.st_mode) or written.st_uid != os.geteuid() or written.st_mode & 0o077:
        raise HokmdbError(f"{path} is not this account's private file after writing it (mode "
                          f"{written.st_mode & 0o7777:o}, uid {written.st_uid}): someone changed it")
    return path


def _write_env_file(path: Path, name: str, value: str) -> None:
    """Replace or add NAME=value, keeping every other line."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [line for line in lines if not line.split("=", 1)[0].strip().removeprefix("export ").strip() == name]
    _write_private(path, "\n".join([*kept, f"{name}={value}"]) + "\n")


async def rotate_password(loaded: LoadedConfig, role: Role, *, approved: str | None = None, show: bool = False,
                          to_file: Path | None = None) -> Rotation:
    config = loaded.config
    environment = config.environment
    protected = config.is_protected
    if environment == "production" and approved is None:
        raise Refused("rotating a production password needs approval",
                      hint="add --approve (or run it from the CI job that sets HOKMDB_DEPLOY_APPROVED=production)")
    if protected and not show and to_file is None:
        raise ConfigError(f"{environment}: the new password must go somewhere: hokmdb never writes a {environment} "
                          "secret into a file the config reads",
                          hint="add --to-file PATH (written 0600) or --show (printed once), then put it in the secret store")
    if to_file is not None:
        check_private_destination(to_file)  # before the password changes: no new password without a home
    base = await resolve_target(loaded)
    if role == "app":
        target: Target | None = base.writable()
    elif role == "owner":
        target = await resolve_owner_target(loaded, base)
    else:
        target = await resolve_monitor_target(loaded, base)
        if target is None:
            raise ConfigError(f"{environment} has no monitoring role to rotate",
                              hint="configure database.monitor_user (DB_MONITOR_USER) first")
    assert target is not None
    target = replace(target, read_only=False)
    if role != "app" and target.user == base.user:
        raise ConfigError(f"the {role} role of {environment} is the application role {base.user}: rotate it as --role app")
    old = target.password or ""
    variable = _variable(loaded, role)
    local = runs_local_server(loaded, base)
    store = password_store(loaded) if local else None
    state = json.loads(store.state_file.read_text()) if store is not None and store.state_file.is_file() else {}
    generated = target.user in state.get("app_passwords", {}) and not (variable and loaded.variables.get(variable))
    if not protected and not generated and variable is None:
        raise ConfigError(f"cannot tell where {environment}'s config reads the {role} password from "
                          f"({_PASSWORD_KEY[role]} is not set from a variable in {loaded.path})",
                          hint="read it from a variable (\"${DB_...}\") so the rotation can store it, or use --show")

    new = secrets.token_urlsafe(32)
    register_secret(new)
    await asyncio.to_thread(_set_own_password, target, new)
    try:
        conn = await connect(replace(target, password=new, read_only=True))
        await conn.close()
    except HokmdbError as exc:
        await asyncio.to_thread(_set_own_password, replace(target, password=new), old)
        raise HokmdbError(f"a login with the new password of {target.user} failed ({exc.message}); the old password "
                          "was set back", hint="check pg_hba.conf's method for this role (scram-sha-256)") from None

    if to_file is not None:
        try:
            _write_private(to_file, new + "\n")
        except (OSError, HokmdbError) as exc:
            await asyncio.to_thread(_set_own_password, replace(target, password=new), old)
            raise HokmdbError(f"the new password of {target.user} could not be written to {to_file} "
                              f"({getattr(exc, 'message', None) or exc}); the old password was set back") from None
    if protected:
        where = f"written to {to_file} (0600)" if to_file is not None else "shown once below"
        stored = (f"{where}; set {variable or _PASSWORD_KEY[role]} to it in {environment}'s secret store and restart "
                  "the clients that log in as this role; sessions open now keep working")
    elif generated:
        assert store is not None
        state["app_passwords"][target.user] = new
        _write_private(store.state_file, json.dumps(state, indent=2))
        stored = f"stored in {store.state_file}, where hokmdb reads the generated passwords of this cluster"
    else:
        assert variable is not None
        path = Path(os.environ.get("HOKMDB_ENV_FILE", loaded.project_root / ENV_FILE_NAME))
        _write_env_file(path, variable, new)
        stored = f"stored as {variable} in {path} (0600), where the {environment} config reads it"
        if os.environ.get(variable):
            stored += f"; {variable} is also set in this shell's environment, which wins: update or unset it"
    if local:
        # PgBouncer's auth file holds SCRAM verifiers copied from the server: the game would meet
        # the old one there until `hokmdb topology start` ran again.
        pooler = await refresh_local_pooler(loaded, target.user)
        if pooler is not None:
            stored += f"; {pooler}"
    log.info("rotated the password of role %s on %s: %s", target.user, target.dsn(), stored)
    return Rotation(role=target.user, target=target.dsn(), stored=stored, password=new if show else None)

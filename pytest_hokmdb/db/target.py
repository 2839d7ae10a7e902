"""Where a session connects, resolved from config, and how to say it safely.

A ``Target`` is the one object every front door uses: asyncpg keyword arguments,
SQLAlchemy URL and connect args, libpq environment for pg_dump/psql subprocesses (the
password travels in the environment, never on a command line), and a redacted DSN for
every message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import URL

from pytest_hokmdb.redaction import MASK, register_secret


@dataclass(frozen=True)
class Target:
    environment: str
    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    sslrootcert: Path | None = None
    read_only: bool = False
    connect_timeout_s: float = 10.0
    statement_timeout_ms: int = 30_000
    lock_timeout_ms: int = 1_000
    application_name: str = "hokmdb"
    embedded: bool = False
    # Where host, port and password come from, for connection hints (LoadedConfig.origin).
    address_origin: str = field(default="", compare=False)
    password_origin: str = field(default="", compare=False)
    # Another login to the same server (``resolve_target`` sets the monitoring role; the monitor's
    # is the role it watches) that reads pg_roles when this one's password is refused: PostgreSQL
    # tells the client "password authentication failed" also for a password past its VALID UNTIL,
    # and only a look at the catalog tells the two apart (db/connect.py).
    witness: Target | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        register_secret(self.password)

    def with_database(self, dbname: str) -> Target:
        return replace(self, dbname=dbname)

    def writable(self) -> Target:
        """The same target without the read-only guard, for deploys that must write."""
        return replace(self, read_only=False)

    def dsn(self, *, redacted: bool = True) -> str:
        secret = MASK if redacted else quote(self.password or "", safe="")
        auth = f"{quote(self.user, safe='')}:{secret}@" if self.password else f"{quote(self.user, safe='')}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{self.dbname}?sslmode={self.sslmode}"

    def __str__(self) -> str:
        return self.dsn()

    # -- drivers -------------------------------------------------------------

    def ssl_argument(self) -> ssl.SSLContext | str | bool:
        """asyncpg's ``ssl=``: a verifying context for verify-*, plain encryption for require."""
        if self.sslmode == "disable":
            return False
        if self.sslmode in ("allow", "prefer"):
            return self.sslmode
        cafile = str(self.sslrootcert) if self.sslrootcert else None
        context = ssl.create_default_context(cafile=cafile)
        if self.sslmode == "require":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.sslmode == "verify-ca":
            context.check_hostname = False
        return context

    def server_settings(self) -> dict[str, str]:
        settings = {
            "application_name": self.application_name,
            "statement_timeout": str(self.statement_timeout_ms),
            "lock_timeout": str(self.lock_timeout_ms),
        }
        if self.read_only:
            settings["default_transaction_read_only"] = "on"
        return settings

    def asyncpg_kwargs(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.dbname,
            "ssl": self.ssl_argument(),
            "timeout": self.connect_timeout_s,
            "server_settings": self.server_settings(),
        }

    def sqlalchemy_url(self) -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.dbname,
        )

    def sqlalchemy_connect_args(self) -> dict[str, object]:
        return {
            "ssl": self.ssl_argument(),
            "timeout": self.connect_timeout_s,
            "server_settings": self.server_settings(),
        }

    def libpq_env(self) -> dict[str, str]:
        """Environment for psql/pg_dump/pg_restore: the password never reaches argv."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.dbname,
            "PGUSER": self.user,
            "PGSSLMODE": self.sslmode,
            "PGAPPNAME": self.application_name,
            "PGCONNECT_TIMEOUT": str(max(1, int(self.connect_timeout_s))),
        }
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.sslrootcert:
            env["PGSSLROOTCERT"] = str(self.sslrootcert)
        if self.read_only:
            env["PGOPTIONS"] = "-c default_transaction_read_only=on"
        return env

"""The deploy lock: a PostgreSQL advisory lock held on a dedicated session for a whole deploy.

Why an advisory lock: it lives in the database being deployed (so two operators on two
machines see the same lock), it needs no table, and PostgreSQL releases it by itself when
the session ends, so a deploy killed with SIGKILL (or a machine that dies) can never leave
it behind. Advisory locks are scoped to the current database, so the keys are constants.

Two keys:

* ``DEPLOY_KEY`` (exclusive, on the lock session): one deploy or migration rollback at a time.
* ``MIGRATION_KEY`` (shared, on every session that runs a revision): lets the next deploy
  prove that no migration session of a killed deploy is still running. A backend whose
  client was SIGKILLed in the middle of a long statement keeps running until it next
  talks to the client; ``client_connection_check_interval`` shortens that, and the next
  deploy waits for (then terminates) such orphans before it touches anything.

Every session carries an ``application_name`` that says who runs it
(``hokmdb-deploy alice@build-7:4242``), so the "deploy already in progress" message a
second operator gets names the holder from ``pg_locks`` + ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from pytest_hokmdb.db.advisory import DEPLOY_KEY, MIGRATION_KEY, NAMESPACE
from pytest_hokmdb.db.connect import connect
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import DeployLocked, HokmdbError

log = logging.getLogger("hokmdb.deploy.lock")

APP_NAME_MAX = 63  # NAMEDATALEN - 1
POLL_S = 0.2


@dataclass(frozen=True)
class Actor:
    """Who runs this deploy: ``HOKMDB_DEPLOY_ACTOR`` (CI sets it to the pipeline's user), else the OS user."""

    who: str
    host: str
    pid: int

    @classmethod
    def current(cls) -> Actor:
        who = os.environ.get("HOKMDB_DEPLOY_ACTOR") or _os_user()
        return cls(who=who, host=socket.gethostname(), pid=os.getpid())

    def application_name(self, role: str) -> str:
        return f"hokmdb-{role} {self.who}@{self.host}:{self.pid}"[:APP_NAME_MAX]

    def __str__(self) -> str:
        return f"{self.who}@{self.host} (pid {self.pid})"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return f"uid{os.getuid()}"


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    client: str
    user: str
    since: datetime | None
    state: str | None

    def describe(self) -> str:
        since = self.since.isoformat(timespec="seconds") if self.since else "an unknown time"
        return (
            f"{self.application_name or '(no application_name)'} "
            f"(server pid {self.pid}, role {self.user}, client {self.client}, connected since {since})"
        )


_HOLDERS = """
SELECT a.pid, coalesce(a.application_name, '') AS application_name,
       coalesce(host(a.client_addr), 'local socket') AS client, coalesce(a.usename::text, '?') AS usename,
       a.backend_start, a.state
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2
  AND l.pid <> pg_backend_pid()
ORDER BY a.backend_start
"""


async def lock_holders(conn: asyncpg.Connection, key: int = DEPLOY_KEY) -> list[LockHolder]:
    rows = await conn.fetch(_HOLDERS, NAMESPACE, key)
    return [
        LockHolder(r["pid"], r["application_name"], r["client"], r["usename"], r["backend_start"], r["state"]) for r in rows
    ]


class DeployLock:
    """The exclusive deploy lock on its own session; ``async with`` or acquire/release."""

    def __init__(self, target: Target, actor: Actor, *, wait_s: float, purpose: str = "deploy") -> None:
        self.target = target
        self.actor = actor
        self.wait_s = wait_s
        self.purpose = purpose
        self.conn: asyncpg.Connection | None = None
        self.acquired_at: float | None = None
        self._use = asyncio.Lock()

    @property
    def session_target(self) -> Target:
        from dataclasses import replace

        return replace(self.target, application_name=self.actor.application_name(self.purpose), statement_timeout_ms=0)

    async def acquire(self) -> None:
        self.conn = await connect(self.session_target)
        deadline = time.monotonic() + self.wait_s
        announced = False
        try:
            while True:
                if await self.conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", NAMESPACE, DEPLOY_KEY):
                    self.acquired_at = time.monotonic()
                    log.info("deploy lock acquired on %s as %r", self.target.dsn(), self.actor.application_name(self.purpose))
                    return
                holders = await lock_holders(self.conn)
                if not announced:
                    who = holders[0].describe() if holders else "another session"
                    log.info("deploy lock is held by %s; waiting up to %gs", who, self.wait_s)
                    announced = True
                if time.monotonic() >= deadline:
                    who = "; ".join(h.describe() for h in holders) or "a session that has just ended"
                    raise DeployLocked(
                        f"deploy already in progress on {self.target.dsn()} by {who}; waited {self.wait_s:g}s",
                        hint="wait for it to finish (its log names the revision it is on); if its process is gone, "
                        "the lock frees itself when PostgreSQL notices the session ended",
                    )
                await asyncio.sleep(POLL_S)
        except BaseException:
            await self.close()
            raise

    async def ensure_held(self) -> None:
        """Fail loudly if the lock session died (server restart, network): the deploy is no longer exclusive."""
        if self.conn is None or self.conn.is_closed():
            raise DeployLocked("the deploy lock session was lost; stopping so that two deploys can never overlap")
        try:
            async with self._use:
                held = await self.conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                    "AND classid = $1::oid AND objid = $2::oid AND objsubid = 2 AND granted",
                    NAMESPACE,
                    DEPLOY_KEY,
                )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise DeployLocked(f"the deploy lock session was lost ({exc}); stopping") from None
        if not held:
            raise DeployLocked("the deploy lock is no longer held by this deploy; stopping")

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """Run a small query on the lock session (the watchdog and blocker monitor use it)."""
        assert self.conn is not None
        async with self._use:
            return await self.conn.fetch(sql, *args)

    async def wait_for_orphans(self, wait_s: float) -> list[int]:
        """Wait until no migration session of an earlier (killed) deploy survives; terminate stragglers.

        Holding the deploy lock means no live deploy owns them, so terminating them is safe:
        their client is gone and their transaction can only roll back. Returns the pids terminated.
        """
        assert self.conn is not None
        deadline = time.monotonic() + wait_s
        terminated: list[int] = []
        announced = False
        while True:
            async with self._use:
                if await self.conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", NAMESPACE, MIGRATION_KEY):
                    await self.conn.execute("SELECT pg_advisory_unlock($1, $2)", NAMESPACE, MIGRATION_KEY)
                    return terminated
                orphans = await lock_holders(self.conn, MIGRATION_KEY)
            if time.monotonic() >= deadline:
                if terminated:
                    raise HokmdbError(
                        f"migration sessions of an earlier deploy are still running (server pids "
                        f"{', '.join(map(str, terminated))}) and could not be terminated",
                        hint="terminate them with pg_terminate_backend() as a superuser, then deploy again",
                    )
                terminated = [o.pid for o in orphans]
                for orphan in orphans:
                    log.warning("terminating orphaned migration session of a killed deploy: %s", orphan.describe())
                async with self._use:
                    await self.conn.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) AS p", terminated)
                deadline = time.monotonic() + 5
            elif not announced:
                log.info(
                    "waiting up to %gs for %d migration session(s) of an earlier deploy to end: %s",
                    wait_s, len(orphans), "; ".join(o.describe() for o in orphans),
                )
                announced = True
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None or conn.is_closed():
            return
        try:
            # Closing the session releases the lock; unlock first so it is free even if close hangs.
            await asyncio.wait_for(conn.execute("SELECT pg_advisory_unlock_all()"), timeout=5)
        except Exception:  # noqa: BLE001 - the session ending releases it anyway
            pass
        try:
            await asyncio.wait_for(conn.close(), timeout=5)
        except Exception:  # noqa: BLE001
            conn.terminate()
        if self.acquired_at is not None:
            log.info("deploy lock released after %.1fs", time.monotonic() - self.acquired_at)

    async def __aenter__(self) -> DeployLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

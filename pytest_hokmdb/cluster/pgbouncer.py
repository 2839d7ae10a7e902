"""PgBouncer in transaction mode in front of a PostgreSQL server, run by hokmdb from Debian's
package, on loopback only.

Game servers reach PostgreSQL through a transaction-mode pooler; hokmdb's local topology
(``cluster/topology.py``) runs one so that tests and rehearsals see what production sees:
session state that does not survive a transaction, pools with waiting clients, ``PAUSE``.

Like PostgreSQL, PgBouncer refuses to run as root: it runs as the server's account. Its
``auth_file`` holds the roles' SCRAM verifiers copied from ``pg_authid`` (never a plaintext
password), so clients authenticate to PgBouncer with their own passwords and PgBouncer logs
into the server with the same SCRAM keys (pass-through).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import pgbouncer_follow as follow
from pytest_hokmdb.cluster.osuser import OsUser
from pytest_hokmdb.cluster.process import environment_for, pid_alive, private_log, run_as
from pytest_hokmdb.cluster.scratch import reserved_port
from pytest_hokmdb.errors import ClusterError

log = logging.getLogger(__name__)

_STATE_FILE = "hokmdb-pgbouncer.json"
# The role PgBouncer lets PAUSE/RESUME (the deploy's maintenance mode): the server's superuser.
POOLER_ADMIN = "postgres"
# asyncpg (and most drivers) send extra_float_digits at startup; PgBouncer does not track it.
_IGNORED_STARTUP = "extra_float_digits"


def pgbouncer_binary() -> Path:
    """Debian installs it in /usr/sbin, which is not on every account's PATH."""
    found = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if Path(p).is_file()), None)
    if found is None:
        raise ClusterError(
            "pgbouncer is not installed on this machine",
            hint="run scripts/ensure-topology.sh as root (apt-get install pgbouncer)",
        )
    return Path(found)


@dataclass(frozen=True)
class PoolerStatus:
    running: bool
    port: int | None
    pid: int | None
    backend_port: int | None

    def describe(self) -> str:
        if not self.running:
            return "pgbouncer: stopped"
        return f"pgbouncer: running (pid {self.pid}), 127.0.0.1:{self.port} -> 127.0.0.1:{self.backend_port}, transaction mode"


class PgBouncer:
    """One PgBouncer process with its config, auth file, log and pid file in ``base_dir``."""

    def __init__(self, base_dir: Path, user: OsUser, *, pool_size: int = 20, max_client_conn: int = 500) -> None:
        self.base_dir = Path(base_dir)
        self.user = user
        self.host = "127.0.0.1"
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn

    # -- files -----------------------------------------------------------------------------

    @property
    def ini(self) -> Path:
        return self.base_dir / "pgbouncer.ini"

    @property
    def auth_file(self) -> Path:
        return self.base_dir / "userlist.txt"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "pgbouncer.pid"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "pgbouncer.log"

    def _state(self) -> dict[str, object]:
        try:
            return json.loads((self.base_dir / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, **values: object) -> None:
        """0600, owned by the server's account: Patroni's callback (``pgbouncer_follow``), which
        runs as that account, records the backend it points PgBouncer at here too."""
        path = self.base_dir / _STATE_FILE
        path.write_text(json.dumps({**self._state(), **values}, indent=2))
        self._own(path, 0o600)

    @property
    def port(self) -> int:
        port = self._state().get("port")
        if not isinstance(port, int):
            raise ClusterError(f"pgbouncer in {self.base_dir} has no port yet; start the topology first")
        return port

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        if self.user.switches:
            os.chown(path, self.user.uid, self.user.gid)

    def write_auth(self, verifiers: Iterable[tuple[str, str]]) -> None:
        """``auth_file`` from (role, SCRAM verifier) pairs; PgBouncer re-reads it on reload."""
        lines = []
        for role, verifier in verifiers:
            if '"' in role or '"' in verifier:
                raise ClusterError(f"role {role!r} cannot be written to PgBouncer's auth file (it contains a double quote)")
            lines.append(f'"{role}" "{verifier}"')
        tmp = self.auth_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        self._own(tmp, 0o600)
        tmp.replace(self.auth_file)

    def _write_ini(self, port: int, backend_port: int, admin_users: list[str], stats_users: list[str],
                   databases: list[str]) -> None:
        settings = {
            "listen_addr": self.host,
            "listen_port": str(port),
            # No unix socket: only loopback TCP, like the servers.
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": str(self.auth_file),
            "pool_mode": "transaction",
            "default_pool_size": str(self.pool_size),
            "max_client_conn": str(self.max_client_conn),
            "admin_users": ",".join(admin_users),
            "stats_users": ",".join(stats_users),
            "ignore_startup_parameters": _IGNORED_STARTUP,
            "pidfile": str(self.pid_file),
            "logfile": str(self.log_file),
            "server_tls_sslmode": "disable",
        }
        # Databases that exist get an entry of their own: PAUSE/RESUME and SHOW DATABASES need a
        # database PgBouncer keeps (an automatic one from '*' is dropped once its pool is idle).
        named = "".join(f"{name} = host={self.host} port={backend_port} dbname={name}\n" for name in databases
                        if name.replace("_", "").isalnum())
        text = (
            "; written by hokmdb on every start of the topology; edit hokmdb's config instead\n"
            "[databases]\n" + named +
            f"* = host={self.host} port={backend_port}\n\n"
            "[pgbouncer]\n" + "\n".join(f"{key} = {value}" for key, value in settings.items()) + "\n"
        )
        self.ini.write_text(text)
        self._own(self.ini, 0o600)

    # -- process -----------------------------------------------------------------------------

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, "pgbouncer") else None

    def status(self) -> PoolerStatus:
        pid = self.pid()
        port = self._state().get("port")
        backend = self._state().get("backend_port")
        return PoolerStatus(pid is not None, port if isinstance(port, int) else None, pid,
                            backend if isinstance(backend, int) else None)

    def serve(self, admin_connect_kwargs: dict[str, object], *, backend_port: int, roles: Iterable[str]) -> None:
        """Start (or reload) PgBouncer in front of ``backend_port`` for every database of that
        server, admitting ``roles`` with their SCRAM verifiers read from it (as the superuser,
        ``admin_connect_kwargs``): the superuser administers it, the others may read its stats."""
        admitted = tuple(dict.fromkeys((POOLER_ADMIN, *roles)))
        verifiers, databases = run_sync(_catalog(admin_connect_kwargs, admitted))
        self.start(databases=databases, backend_port=backend_port, admin_users=[POOLER_ADMIN],
                   stats_users=[r for r in admitted if r != POOLER_ADMIN], verifiers=verifiers)

    def start(self, *, backend_port: int, admin_users: list[str], stats_users: list[str],
              verifiers: Iterable[tuple[str, str]], databases: list[str] | None = None) -> None:
        """Start PgBouncer in front of ``backend_port`` (idempotent: a running one reloads its
        auth file and config)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.base_dir, 0o700)
        self.write_auth(verifiers)
        running = self.pid()
        remembered = self._state().get("port")
        names = list(databases or [])
        if running is not None and isinstance(remembered, int):
            self._write_ini(remembered, backend_port, admin_users, stats_users, names)
            os.kill(running, signal.SIGHUP)
            self._write_state(backend_port=backend_port)
            return
        self.log_file.touch(exist_ok=True)
        self._own(self.log_file, 0o600)
        if isinstance(remembered, int) and not _listening(remembered):
            self._launch(remembered, backend_port, admin_users, stats_users, names)
            return
        with reserved_port(self.host) as port:
            self._launch(port, backend_port, admin_users, stats_users, names)

    def _launch(self, port: int, backend_port: int, admin_users: list[str], stats_users: list[str],
                databases: list[str]) -> None:
        self._write_ini(port, backend_port, admin_users, stats_users, databases)
        self._write_state(port=port, backend_port=backend_port)
        private_log(self.log_file, self.user)
        env = environment_for(self.user)
        result = run_as(self.user, [str(pgbouncer_binary()), "-d", "-q", str(self.ini)], env=env, cwd=self.base_dir, timeout=30)
        if result.returncode != 0:
            raise ClusterError(
                f"pgbouncer did not start (exit {result.returncode}): {(result.stderr or result.stdout).strip()[-300:]}",
                hint=f"PgBouncer's log: {self.log_file}",
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.pid() is not None and _listening(port):
                log.info("pgbouncer started on %s:%s (transaction mode) in front of port %s", self.host, port, backend_port)
                return
            time.sleep(0.05)
        raise ClusterError(f"pgbouncer did not listen on {self.host}:{port} within 10 s", hint=f"PgBouncer's log: {self.log_file}")

    def retarget(self, backend_port: int) -> None:
        """Point the running (or next) PgBouncer at ``backend_port`` and RELOAD it: what Patroni's
        callback does on a new leader, done by hokmdb when it finds the leader elsewhere."""
        if not follow.retarget(self.base_dir, backend_port):
            raise ClusterError(f"pgbouncer in {self.base_dir} has no config yet; start the topology first")
        log.info("pgbouncer in %s now points at port %s", self.base_dir, backend_port)

    def reload(self, verifiers: Iterable[tuple[str, str]]) -> None:
        """New roles or passwords: rewrite the auth file and have PgBouncer re-read it."""
        self.write_auth(verifiers)
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    async def refresh_auth(self, admin_connect_kwargs: dict[str, object], *, roles: Iterable[str]) -> bool:
        """A role's password changed on the server (``hokmdb rotate-password``): rewrite the auth
        file from the verifiers the server has now, for the same roles ``serve`` admits, and
        RELOAD on the admin console. PgBouncer answers RELOAD once it has re-read the file, so
        the next login already meets the new verifier (a SIGHUP would be handled some time
        later). False when PgBouncer does not run: its next start writes the file anyway."""
        if self.pid() is None:
            return False
        admitted = tuple(dict.fromkeys((POOLER_ADMIN, *roles)))
        try:
            verifiers, _ = await _catalog(admin_connect_kwargs, admitted)
            self.write_auth(verifiers)
            conn = await asyncpg.connect(host=self.host, port=self.port, user=POOLER_ADMIN,
                                         password=admin_connect_kwargs["password"], database="pgbouncer",
                                         statement_cache_size=0, ssl=False, timeout=10)
            try:
                await conn.execute("RELOAD")  # no arguments: the simple query protocol, which the console speaks
            finally:
                conn.terminate()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise ClusterError(f"PgBouncer on {self.host}:{self.port} did not reload its auth file: {str(exc).strip()}",
                               hint=f"PgBouncer's log: {self.log_file}") from None
        log.info("pgbouncer on %s:%s reloaded its auth file", self.host, self.port)
        return True

    def stop(self) -> bool:
        """Immediate shutdown (SIGTERM); False when it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.05)
        if self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


async def _catalog(admin_connect_kwargs: dict[str, object], roles: tuple[str, ...]) -> tuple[list[tuple[str, str]], list[str]]:
    """The roles' SCRAM verifiers (PgBouncer's auth file never holds a password) and the
    databases PgBouncer names."""
    conn = await asyncpg.connect(**admin_connect_kwargs)  # type: ignore[arg-type]
    try:
        rows = await conn.fetch(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1::text[]) AND rolcanlogin "
            "AND rolpassword LIKE 'SCRAM-SHA-256$%'", list(roles))
        names = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres'")
    finally:
        await conn.close()
    return [(r["rolname"], r["rolpassword"]) for r in rows], [r["datname"] for r in names]

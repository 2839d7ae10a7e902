"""A PostgreSQL cluster that hokmdb creates and runs itself from the machine's binaries.

The same class serves the developer's long-lived cluster (``hokmdb cluster start``) and
the throwaway clusters the tests start, so both are exercised by every test run.

PostgreSQL refuses to run as root. When hokmdb runs as root, the server (and initdb /
pg_ctl) run under an unprivileged account (``postgres`` by default) and the data
directory is owned by it; hokmdb itself keeps running as root and talks to the server
over TCP on 127.0.0.1 and over a unix socket in a directory only that account (and root)
can enter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_hokmdb.cluster.binaries import find_bin_dir
from pytest_hokmdb.cluster.osuser import OsUser, resolve_os_user
from pytest_hokmdb.cluster.process import (
    environment_for,
    postmaster_alive,
    postmaster_pid,
    postmaster_ready,
    private_log,
    run_as,
    run_as_until,
)
from pytest_hokmdb.cluster.scratch import reserved_port, sweep_orphans
from pytest_hokmdb.errors import ClusterError
from pytest_hokmdb.redaction import register_secret

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
_STATE_FILE = "hokmdb-cluster.json"
_CONF_INCLUDE = "hokmdb.conf"
# Unix socket paths are limited to 107 bytes; keep room for ".s.PGSQL.NNNNN".
_MAX_SOCKET_DIR_LEN = 80
# Settings that make throwaway clusters fast; never used for a cluster that keeps data.
THROWAWAY_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    # Test queries are short; JIT-compiling big catalog queries (autogenerate's reflection)
    # cost seconds per test run.
    "jit": "off",
}


def socket_dir_for(base_dir: Path) -> Path:
    """``base_dir/run``, or a stable directory under the system temp dir when that path is too
    long for a unix socket (107 bytes including the socket's own name)."""
    candidate = base_dir / "run"
    if len(str(candidate)) <= _MAX_SOCKET_DIR_LEN:
        return candidate
    digest = hashlib.sha1(str(base_dir).encode(), usedforsecurity=False).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hokmdb-sock-{digest}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class ClusterStatus:
    running: bool
    initialized: bool
    data_dir: Path
    port: int | None
    socket_dir: Path | None
    pid: int | None
    os_user: str

    def describe(self) -> str:
        if not self.initialized:
            return f"embedded cluster: not created yet (data directory {self.data_dir})"
        state = f"running (pid {self.pid})" if self.running else "stopped"
        where = f"127.0.0.1:{self.port}" if self.port else "no port yet"
        return f"embedded cluster: {state}, {where}, data {self.data_dir}, server user {self.os_user}"


class EmbeddedCluster:
    """One PostgreSQL data directory plus the commands that create, start and stop it."""

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        os_user: str | None = None,
        settings: dict[str, str] | None = None,
        ssl_files: tuple[Path, Path] | None = None,
    ) -> None:
        self.user: OsUser = resolve_os_user(os_user)
        self.base_dir = self._reachable_base_dir(Path(base_dir).resolve())
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.bin_dir = find_bin_dir(bin_dir)
        self._fixed_port = port
        self.settings = dict(settings or {})
        self.ssl_files = ssl_files
        self.host = "127.0.0.1"

    # -- locations -------------------------------------------------------------

    def _reachable_base_dir(self, wanted: Path) -> Path:
        """The configured directory, or a stable fallback when the server account can't reach it.

        As root, a checkout under /root (mode 0700) cannot be entered by ``postgres``;
        rather than fail, the cluster lives under the system temp dir, keyed by the wanted path.
        """
        if not self.user.switches:
            return wanted
        probe = wanted
        while not probe.exists():
            probe = probe.parent
        if self.user.can_enter(probe):
            return wanted
        digest = hashlib.sha1(str(wanted).encode(), usedforsecurity=False).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"hokmdb-{self.user.name}" / f"{wanted.name}-{digest}"
        log.info("server account %s cannot enter %s; using %s", self.user.name, wanted, fallback)
        return fallback

    @property
    def socket_dir(self) -> Path:
        return socket_dir_for(self.base_dir)

    @property
    def state_file(self) -> Path:
        return self.base_dir / _STATE_FILE

    def _state(self) -> dict[str, object]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, **values: object) -> None:
        state = {**self._state(), **values}
        self.state_file.write_text(json.dumps(state, indent=2))
        self.state_file.chmod(0o600)

    @property
    def port(self) -> int:
        port = self._state().get("port")
        if not isinstance(port, int):
            raise ClusterError(f"embedded cluster in {self.base_dir} has no port yet; start it first")
        return port

    @property
    def superuser_password(self) -> str:
        password = self._state().get("superuser_password")
        if not isinstance(password, str):
            raise ClusterError(f"embedded cluster in {self.base_dir} is not initialised")
        register_secret(password)
        return password

    # -- commands ----------------------------------------------------------------

    def _run(
        self, args: list[str], *, check: bool = True, timeout: float = 120, done: Callable[[], bool] | None = None
    ) -> subprocess.CompletedProcess[str] | None:
        """Run a server program as the server's account; ``done``: return as soon as it
        holds (see ``run_as_until``), None then."""
        env = environment_for(self.user)  # never the operator's secrets: the server would hold them
        try:
            if done is None:
                result = run_as(self.user, args, env=env, cwd=self.base_dir, timeout=timeout)
            else:
                result = run_as_until(self.user, args, env=env, cwd=self.base_dir, timeout=timeout, done=done)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{Path(args[0]).name} did not finish within {timeout:.0f}s", hint=self._log_hint()) from None
        if result is None:
            return None
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()[-8:]
            raise ClusterError(
                f"{Path(args[0]).name} failed (exit {result.returncode}): " + " | ".join(output),
                hint=self._log_hint(),
            )
        return result

    def _log_hint(self) -> str:
        return f"server log: {self.log_file}"

    def _own(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if self.user.switches:
            os.chown(path, self.user.uid, self.user.gid)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the data directory (idempotent): ``initdb`` with scram for TCP, trust on the socket.

        A throwaway cluster (fsync off) is a copy of a pristine ``initdb`` output kept per
        PostgreSQL installation and server account (``_pristine``): copying takes a tenth of
        what initdb takes, and the test suites start dozens of them. The pristine directory
        has no password at all; each copy's superuser gets its own on first start."""
        if self.initialized():
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755 if self.user.switches else 0o700)
        if self.data_dir.exists():
            # A half-created data directory from an interrupted initdb: start over.
            shutil.rmtree(self.data_dir)
        if self.settings.get("fsync") == "off":
            self._copy_pristine()
            return
        self._own(self.data_dir)
        password = secrets.token_urlsafe(24)
        register_secret(password)
        pwfile = self.base_dir / ".pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if self.user.switches:
            os.chown(pwfile, self.user.uid, self.user.gid)
        try:
            self._run(self._initdb(self.data_dir, f"--pwfile={pwfile}"))
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write(f"\ninclude_if_exists = '{_CONF_INCLUDE}'\n")
        self._write_state(superuser_password=password, created_by=os.getuid())

    def _initdb(self, data_dir: Path, *extra: str) -> list[str]:
        """initdb's command line: scram for TCP, trust on the socket, UTF8 without a locale, data checksums."""
        return [str(self.bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth-local=trust",
                "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale", "--data-checksums", *extra]

    def _pristine(self) -> Path:
        """The pristine data directory for this installation and server account, made once
        (under a lock, renamed into place whole, so parallel workers never see half of one)."""
        import fcntl

        key = hashlib.sha1(f"{self.bin_dir.resolve()}:{self.user.uid}:checksums".encode(), usedforsecurity=False).hexdigest()[:12]
        root = Path(tempfile.gettempdir()) / f"hokmdb-pristine-{os.getuid()}"
        root.mkdir(mode=0o755, exist_ok=True)
        pristine = root / key
        if (pristine / "PG_VERSION").is_file():
            return pristine
        with (root / f"{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (pristine / "PG_VERSION").is_file():
                return pristine
            building = root / f"{key}.building-{os.getpid()}"
            shutil.rmtree(building, ignore_errors=True)
            self._own(building)
            self._run(self._initdb(building, "--no-sync"))
            building.rename(pristine)
        return pristine

    def _copy_pristine(self) -> None:
        shutil.copytree(self._pristine(), self.data_dir, symlinks=True)
        if self.user.switches:
            for directory, dirs, files in os.walk(self.data_dir):
                for name in (directory, *(os.path.join(directory, f) for f in dirs + files)):
                    os.chown(name, self.user.uid, self.user.gid, follow_symlinks=False)
        self.data_dir.chmod(0o700)
        with (self.data_dir / "postgresql.conf").open("a") as handle:
            handle.write(f"\ninclude_if_exists = '{_CONF_INCLUDE}'\n")
        password = secrets.token_urlsafe(24)
        register_secret(password)
        self._write_state(superuser_password=password, created_by=os.getuid(), password_pending=True)

    def _set_pending_password(self, port: int) -> None:
        """A copied cluster's superuser gets its password over the trust socket, as a SCRAM
        verifier computed here: the password itself never reaches the server or its log."""
        if not self._state().get("password_pending"):
            return
        import asyncpg

        from pytest_hokmdb.aio import run_sync

        verifier = scram_verifier(self.superuser_password)

        async def set_password() -> None:
            conn = await asyncpg.connect(host=str(self.socket_dir), port=port, user=SUPERUSER, database="postgres")
            try:
                await conn.execute(f"ALTER ROLE {SUPERUSER} PASSWORD '{verifier}'")
            finally:
                await conn.close()

        run_sync(set_password())
        self._write_state(password_pending=False)

    def _write_conf(self, port: int) -> None:
        settings = {
            "listen_addresses": self.host,
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            # Which statements ran: the evidence a contract revision and a rollback of an
            # expand wait for (deploy/transitions.py); created per database by provision_monitor.
            "shared_preload_libraries": "pg_stat_statements",
            **self.settings,
        }
        if self.ssl_files:
            cert, key = self.ssl_files
            settings.update(ssl="on", ssl_cert_file=str(cert), ssl_key_file=str(key))
        lines = [f"{k} = '{v}'" for k, v in settings.items()]
        target = self.data_dir / _CONF_INCLUDE
        target.write_text("# written by hokmdb on every start; edit the config instead\n" + "\n".join(lines) + "\n")
        if self.user.switches:
            os.chown(target, self.user.uid, self.user.gid)

    def status(self) -> ClusterStatus:
        state = self._state()
        pid = None
        running = False
        if self.initialized():
            running = postmaster_alive(self.data_dir)
            pid = postmaster_pid(self.data_dir) if running else None
        port = state.get("port")
        return ClusterStatus(
            running=running,
            initialized=self.initialized(),
            data_dir=self.data_dir,
            port=port if isinstance(port, int) else None,
            socket_dir=self.socket_dir if self.initialized() else None,
            pid=pid,
            os_user=self.user.name,
        )

    def is_running(self) -> bool:
        return self.status().running

    def exposure(self) -> list[str]:
        """Why another account could read this cluster's data, or swap its directory (or one
        above it) for one of its own; empty when none could. The data directory must be the
        server account's with mode 0700, and every directory above it owned by root, hokmdb's
        account or the server's and writable by no one else unless sticky (like /tmp)."""
        trusted = {0, os.getuid(), self.user.uid}
        problems: list[str] = []
        try:
            info = self.data_dir.stat()
            if info.st_uid != self.user.uid or stat.S_IMODE(info.st_mode) != 0o700:
                problems.append(f"{self.data_dir} has owner uid {info.st_uid} and mode "
                                f"{stat.S_IMODE(info.st_mode):o} (the server account's, 700 expected)")
            for parent in self.data_dir.parents:
                info = parent.stat()
                if info.st_uid not in trusted:
                    problems.append(f"{parent} belongs to uid {info.st_uid}, which could rename what is in it")
                elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
                    problems.append(f"{parent} is writable by other accounts (mode {stat.S_IMODE(info.st_mode):o})")
        except OSError as exc:
            problems.append(f"{self.data_dir}: {exc}")
        return problems

    def start(self) -> None:
        """Start the server if it is not running (initialising it first); idempotent."""
        self.init()
        if self.is_running():
            return
        self._own(self.socket_dir)
        remembered = self._state().get("port")
        port = self._fixed_port or (remembered if isinstance(remembered, int) else None)
        if self._fixed_port and _port_in_use(self._fixed_port):
            raise ClusterError(
                f"port {port} on {self.host} is already in use",
                hint="set embedded.port to a free port, or remove it to let hokmdb pick one",
            )
        if port is not None and (self._fixed_port or not _port_in_use(port)):
            self._start_on(port)
            return
        # A new port: reserved from the moment it is picked until the server listens on it,
        # so parallel workers starting clusters cannot pick the same one.
        with reserved_port(self.host) as port:
            self._start_on(port)

    def _start_on(self, port: int) -> None:
        self._write_conf(port)
        self._write_state(port=port)
        private_log(self.log_file, self.user)
        launched = time.time()
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-w",
                "-t", "60",
            ],
            done=lambda: postmaster_ready(self.data_dir, launched),
        )
        self._set_pending_password(port)
        log.info("embedded PostgreSQL started on %s:%s (data %s)", self.host, port, self.data_dir)

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server; returns False when it was not running."""
        if not self.initialized() or not self.is_running():
            return False
        self._run([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60"],
                  done=lambda: not postmaster_alive(self.data_dir))
        return True

    def destroy(self) -> None:
        """Stop the server and delete its files (throwaway clusters)."""
        try:
            self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            if self.socket_dir != self.base_dir / "run":
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- connection details ------------------------------------------------------

    def admin_connect_kwargs(self, dbname: str = "postgres") -> dict[str, object]:
        """asyncpg keyword arguments for the superuser over TCP (scram, password from state)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": SUPERUSER,
            "password": self.superuser_password,
            "database": dbname,
            "ssl": False,
        }

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """A libpq/asyncpg URL with the superuser password: for tests and internal use only."""
        from urllib.parse import quote

        return f"postgresql://{SUPERUSER}:{quote(self.superuser_password, safe='')}@{self.host}:{self.port}/{dbname}"

    def server_version(self) -> str:
        result = self._run([str(self.bin_dir / "postgres"), "--version"])
        assert result is not None  # no ``done``: the program's own result
        return result.stdout.strip()


def _destroy_scratch(path: Path) -> None:
    """A scratch cluster's server, or the PgBouncer of a scratch topology (``cluster.topology``)."""
    if (path / "pgbouncer.ini").exists():
        from pytest_hokmdb.cluster.pgbouncer import PgBouncer

        PgBouncer(path, resolve_os_user(None)).stop()
        return
    EmbeddedCluster(path).destroy()


def sweep_orphan_clusters(*, dry_run: bool = False) -> list[Path]:
    """Stop and remove the scratch clusters (and topologies) of processes that are gone
    (``cluster.scratch``); ``dry_run``: only say which."""
    return sweep_orphans(_destroy_scratch, dry_run=dry_run)


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of ``password`` (RFC 7677, as the server stores
    it): ``ALTER ROLE ... PASSWORD '<verifier>'`` sets the password without sending it."""
    import base64
    import hmac

    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
            f"{b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")

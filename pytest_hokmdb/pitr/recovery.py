"""Point-in-time recovery into a new data directory, started on a spare port and promoted.

The running server is never touched: pgBackRest restores the chosen backup into a
directory that did not exist before, and a second PostgreSQL recovers it up to the
target on a free port of 127.0.0.1, then promotes it. The copy runs with
``archive_mode=off`` (on its command line *and* in the config pgBackRest writes into it)
because a second server archiving into the same stanza would fork the archive's history
and break every later restore.

Nothing is left half-done: if any step fails, the copy is stopped and its directory
removed (its server log is kept in the stanza's log directory for the post-mortem).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from pytest_hokmdb.cluster.archive.conf import command_environment
from pytest_hokmdb.cluster.archive.settings import shell_safe
from pytest_hokmdb.cluster.embedded import socket_dir_for
from pytest_hokmdb.cluster.osuser import OsUser
from pytest_hokmdb.cluster.process import postmaster_alive, private_log, run_as
from pytest_hokmdb.cluster.scratch import reserved_port
from pytest_hokmdb.db import Target
from pytest_hokmdb.errors import BackupError, HokmdbError
from pytest_hokmdb.pitr.engine import PgBackRest
from pytest_hokmdb.pitr.errors import RecoveryFailed, RecoveryTargetError, WalGapError, explain, printable
from pytest_hokmdb.pitr.info import BackupSet
from pytest_hokmdb.pitr.points import RestorePointLedger
from pytest_hokmdb.pitr.wal import Lsn, Segment
from pytest_hokmdb.pitr.window import (
    RecoveryTarget,
    RecoveryWindow,
    ResolvedTarget,
    format_time,
    recovery_window,
    resolve_target,
)
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.pitr")

HOST = "127.0.0.1"
_PROGRESS_EVERY_S = 10.0
_NOT_REACHED = "recovery ended before configured recovery target was reached"
_BEFORE_CONSISTENT = "requested recovery stop point is before consistent recovery point"
_FATAL_RE = re.compile(r"\b(FATAL|PANIC):\s+(.*)$")
# FATALs a client sees while the copy is still recovering (our own polling causes them).
_CLIENT_FATALS = ("the database system is starting up", "not yet accepting connections", "is shutting down")
_REDO_DONE_RE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_TX_RE = re.compile(r"last completed transaction was at log time (.+?)\s*$", re.M)
_RESTORED_RE = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
# pgBackRest's archive-get says this at info level (the config sets that for archive-get).
_NOT_FOUND_RE = re.compile(r"unable to find ([0-9A-F]{24}) in the archive")
_PGBACKREST_ERROR_RE = re.compile(r"(?:ERROR|ASSERT): \[\d{3}\]: .*")
_HBA = """# Written by hokmdb for a restored copy: its private socket admits the server account and
# root (trust); TCP on 127.0.0.1 takes the restored roles' passwords.
local all all trust
host all all 127.0.0.1/32 scram-sha-256
"""


@dataclass
class RestoredCopy:
    """A restored, recovered and promoted copy of the cluster, running on a spare port.

    It keeps running until ``stop()`` or ``destroy()``; its data directory is the
    caller's to keep (e.g. to dump from it, or to run the smoke suite against it).
    """

    base_dir: Path
    data_dir: Path
    socket_dir: Path
    log_file: Path
    port: int
    backup: BackupSet
    target: RecoveryTarget
    recovered_lsn: Lsn
    recovered_time: datetime | None
    pg_user: str
    bin_dir: Path
    user: OsUser = field(repr=False)
    env: dict[str, str] = field(repr=False, default_factory=dict)
    host: str = HOST

    def admin_connect_kwargs(self, dbname: str = "postgres") -> dict[str, object]:
        """asyncpg keyword arguments for the superuser over the copy's private socket (no password)."""
        return {"host": str(self.socket_dir), "port": self.port, "user": self.pg_user, "database": dbname, "ssl": False}

    async def admin_connect(self, dbname: str = "postgres") -> asyncpg.Connection:
        return await asyncpg.connect(**self.admin_connect_kwargs(dbname))  # type: ignore[arg-type]

    def describe(self) -> str:
        when = f", last transaction {format_time(self.recovered_time)}" if self.recovered_time else ""
        return (
            f"restored copy on {self.host}:{self.port} (data {self.data_dir}): recovered to {self.target.describe()} "
            f"from backup {self.backup.label}, replayed up to LSN {self.recovered_lsn}{when}"
        )

    def _pg_ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        try:
            return run_as(self.user, [str(self.bin_dir / "pg_ctl"), *args], env=self.env, cwd=self.base_dir, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RecoveryFailed(f"pg_ctl {args[0]} did not finish within {timeout:.0f}s") from None

    def is_running(self) -> bool:
        return postmaster_alive(self.data_dir)

    def stop(self, mode: str = "fast") -> bool:
        """Stop the copy's server; False when it was not running."""
        if not self.is_running():
            return False
        result = self._pg_ctl("stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")
        if result.returncode != 0 and self.is_running():
            raise RecoveryFailed(
                f"could not stop the restored copy in {self.data_dir}: {printable(result.stderr.strip())}",
                hint=f"stop it by hand: pg_ctl stop -D {self.data_dir} -m immediate (as {self.user.name})",
            )
        return True

    def destroy(self) -> None:
        """Stop the copy and delete everything it consists of."""
        try:
            self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            if self.socket_dir.parent != self.base_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)


def _new_base_dir(engine: PgBackRest, restore_dir: Path | None) -> Path:
    setup = engine.setup
    if restore_dir is None:
        setup.own(setup.restores_dir, 0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = setup.restores_dir / f"pitr-{stamp}-{secrets.token_hex(2)}"
    else:
        base = restore_dir.resolve()
        base.parent.mkdir(parents=True, exist_ok=True)
        if not setup.user.can_enter(base.parent):
            raise BackupError(
                f"the server account {setup.user.name} cannot enter {base.parent}, so it cannot run a copy restored there",
                hint="choose a restore directory under a path that account can traverse (not under /root)",
            )
    if base.exists():
        raise BackupError(
            f"restore directory {base} already exists; a restore always goes into a new directory",
            hint="choose a directory that does not exist yet",
        )
    shell_safe(base, "the restore directory")
    return base


def _keep_log(engine: PgBackRest, log_file: Path, base: Path) -> Path | None:
    """Copy the failed copy's server log into the stanza's log dir before its directory goes."""
    if not log_file.is_file():
        return None
    kept = engine.setup.log_dir / f"{base.name}-postgres.log"
    try:
        shutil.copyfile(log_file, kept)
        kept.chmod(0o600)
        if engine.setup.user.switches:
            os.chown(kept, engine.setup.user.uid, engine.setup.user.gid)
    except OSError:
        return None
    return kept


def _gave_up(log_file: Path) -> bool:
    """Whether the server's log says it stopped (it may start and die between two polls)."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return False
    return "database system is shut down" in text or any(
        m and not any(c in m[2] for c in _CLIENT_FATALS) for m in map(_FATAL_RE.search, text.splitlines())
    )


async def _recovery_state(copy: RestoredCopy) -> tuple[bool, Lsn | None, datetime | None] | None:
    """(in recovery, replayed LSN, last replayed transaction time), or None while not accepting connections."""
    try:
        conn = await asyncpg.connect(**copy.admin_connect_kwargs(), timeout=5)  # type: ignore[arg-type]
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    try:
        row = await conn.fetchrow(
            "SELECT pg_is_in_recovery() AS r, pg_last_wal_replay_lsn()::text AS lsn, pg_last_xact_replay_timestamp() AS t"
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return None
    finally:
        await conn.close()
    assert row is not None
    return bool(row["r"]), Lsn.parse(row["lsn"]) if row["lsn"] else None, row["t"]


def _diagnose(
    engine: PgBackRest,
    log_text: str,
    resolved: ResolvedTarget,
    window: RecoveryWindow,
    kept_log: Path | None,
) -> HokmdbError:
    """Why the copy's server stopped, from its log (and the repository, for a WAL gap)."""
    where = f"the copy's server log is kept at {kept_log}" if kept_log else "the copy's server log is gone"
    target = resolved.target.describe()
    fatals = [m[2].strip() for m in map(_FATAL_RE.search, log_text.splitlines()) if m]
    fatals = [f for f in fatals if not any(c in f for c in _CLIENT_FATALS)]
    redo = _REDO_DONE_RE.findall(log_text)
    last_tx = _LAST_TX_RE.findall(log_text)
    reached = Lsn.parse(redo[-1]) if redo else resolved.backup.lsn_stop
    nearest = f"LSN {reached}" + (f", last transaction at {last_tx[-1]}" if last_tx else f" (end of backup {resolved.backup.label})")
    if any(_NOT_REACHED in f for f in fatals):
        try:
            gaps = [g for g in engine.wal_gaps() if g[1].end > resolved.backup.lsn_start]
        except HokmdbError:
            gaps = []
        not_found = _NOT_FOUND_RE.findall(log_text)
        restored = _RESTORED_RE.findall(log_text)
        if not gaps and (not_found or restored):
            # The repository listing could not be read: name the segment recovery asked for in vain,
            # unless it lies beyond the newest archived WAL (then it is the end, not a hole).
            asked = Segment.parse(not_found[-1]) if not_found else Segment.parse(restored[-1]).next()
            if asked.end <= window.latest_lsn:
                gaps = [(asked, asked)]
        if gaps:
            first, last = gaps[0]
            names = first.name if first == last else f"{first.name} to {last.name}"
            return WalGapError(
                f"recovery to {target} stopped early: WAL between {first.start} and {last.end} is missing from the "
                f"repository (segment {names}); the nearest reachable point is {nearest}",
                hint=f"choose a target before that point, or take a new full backup so later moments are reachable "
                f"again; {where}",
            )
        return RecoveryTargetError(
            f"recovery to {target} replayed all archived WAL (up to {nearest}) without reaching the target",
            hint="a time target needs a transaction committed after it to be archived; target an LSN or a restore "
            f"point instead, or wait until newer WAL is archived; {where}",
        )
    if any(_BEFORE_CONSISTENT in f for f in fatals):
        return RecoveryTargetError(
            f"recovery target {target} lies inside backup {resolved.backup.label}, before it became consistent",
            hint=f"choose a target after {format_time(resolved.backup.stopped_at)}; {where}",
        )
    archive_errors = _PGBACKREST_ERROR_RE.findall(log_text)
    if archive_errors:
        error = explain(
            "archive-get",
            "\n".join(archive_errors),
            exit_code=1,
            cipher_type=engine.setup.settings.cipher_type,
            log_hint=where,
        )
        return RecoveryFailed(f"the restored copy could not fetch WAL: {error.message}", hint=error.hint)
    reason = fatals[-1] if fatals else "it exited without a FATAL message"
    return RecoveryFailed(f"the restored copy's server stopped during recovery: {redact(reason)}", hint=where)


async def _start_and_recover(
    engine: PgBackRest,
    copy: RestoredCopy,
    resolved: ResolvedTarget,
    window: RecoveryWindow,
    timeout_s: float,
) -> RestoredCopy:
    options = {
        "port": str(copy.port),
        "listen_addresses": HOST,
        "unix_socket_directories": str(copy.socket_dir),
        "archive_mode": "off",
        "hba_file": str(copy.base_dir / "pg_hba.conf"),
        "logging_collector": "off",
        "log_min_messages": "warning",
        "cluster_name": f"hokmdb-pitr-{copy.base_dir.name}",
    }
    opts = " ".join(f"-c {key}={value}" for key, value in options.items())
    private_log(copy.log_file, copy.user)
    result = copy._pg_ctl("start", "-W", "-D", str(copy.data_dir), "-l", str(copy.log_file), "-o", opts)
    if result.returncode != 0:
        raise RecoveryFailed(f"pg_ctl could not start the restored copy: {printable(result.stderr.strip())}")
    started = time.monotonic()
    deadline = started + timeout_s
    next_progress = started + _PROGRESS_EVERY_S
    seen_alive = False
    while True:
        alive = copy.is_running()
        seen_alive = seen_alive or alive
        if not alive and (seen_alive or _gave_up(copy.log_file) or time.monotonic() - started > 15):
            log_text = copy.log_file.read_text(errors="replace") if copy.log_file.exists() else ""
            kept = _keep_log(engine, copy.log_file, copy.base_dir)
            raise _diagnose(engine, log_text, resolved, window, kept)
        state = await _recovery_state(copy) if alive else None
        if state is not None and not state[0]:
            copy.recovered_lsn = state[1] or copy.recovered_lsn
            copy.recovered_time = state[2]
            log.info("%s (%.1fs)", copy.describe(), time.monotonic() - started)
            return copy
        now = time.monotonic()
        if now > deadline:
            replayed = f"; replayed up to LSN {state[1]}" if state and state[1] else ""
            kept = _keep_log(engine, copy.log_file, copy.base_dir)
            raise RecoveryFailed(
                f"the restored copy did not finish recovery to {resolved.target.describe()} within {timeout_s:.0f}s{replayed}",
                hint="raise physical.recovery_timeout_s for large WAL volumes"
                + (f"; the copy's server log is kept at {kept}" if kept else ""),
            )
        if now >= next_progress:
            where = f"replayed up to LSN {state[1]}" if state and state[1] else "not accepting connections yet"
            log.info("recovering to %s: %s (%.0fs)", resolved.target.describe(), where, now - started)
            next_progress = now + _PROGRESS_EVERY_S
        await asyncio.sleep(0.2)


async def restore_to_point(
    engine: PgBackRest,
    target: RecoveryTarget,
    *,
    live: asyncpg.Connection | Target | None = None,
    restore_dir: Path | None = None,
    ledger: RestorePointLedger | None = None,
    timeout_s: float | None = None,
) -> RestoredCopy:
    """Recover the stanza to ``target`` in a new directory; returns the running, promoted copy.

    ``live`` (the running server, optional) gives the newest archived moment; without it
    the repository's own record is used. ``restore_dir`` must not exist yet (default: a
    new directory under the stanza's private ``restores/``). The target is checked
    against the reachable window before anything is restored; on any failure the copy is
    stopped and removed, and the running server is never touched.
    """
    setup = engine.setup
    info = await asyncio.to_thread(engine.info)
    window = await recovery_window(engine, live, info=info)
    resolved = resolve_target(window, target, ledger or RestorePointLedger.for_setup(setup))
    base = _new_base_dir(engine, restore_dir)
    socket_dir = socket_dir_for(base)
    copy = RestoredCopy(
        base_dir=base,
        data_dir=base / "data",
        socket_dir=socket_dir,
        log_file=base / "postgres.log",
        port=0,
        backup=resolved.backup,
        target=target,
        recovered_lsn=resolved.backup.lsn_stop,
        recovered_time=None,
        pg_user=setup.settings.pg_user,
        bin_dir=setup.bin_dir,
        user=setup.user,
        env=command_environment(setup),
    )
    started = time.monotonic()
    log.info("restoring backup %s into %s to reach %s", resolved.backup.label, base, target.describe())
    try:
        for path in (base, copy.data_dir, socket_dir):
            setup.own(path, 0o700)
        hba = base / "pg_hba.conf"
        hba.write_text(_HBA)
        hba.chmod(0o600)
        if setup.user.switches:
            os.chown(hba, setup.user.uid, setup.user.gid)
        await asyncio.to_thread(
            engine.restore,
            copy.data_dir,
            backup_label=resolved.backup.label,
            recovery_type=target.kind,
            target=target.pgbackrest_target(),
            tablespace_dir=base / "tablespaces",
        )
        log.info("backup %s restored in %.1fs; starting recovery", resolved.backup.label, time.monotonic() - started)
        with reserved_port(HOST) as port:  # held until the copy listens on it
            copy.port = port
            return await _start_and_recover(engine, copy, resolved, window, timeout_s or setup.settings.recovery_timeout_s)
    except BaseException:
        try:
            copy.destroy()
        except HokmdbError as exc:
            log.error("could not clean up the failed restore in %s: %s", base, exc)
        raise

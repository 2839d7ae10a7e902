"""A production-shaped topology on one machine: the primary, a streaming standby made with
``pg_basebackup`` and PgBouncer in transaction mode in front of the primary, all on loopback.

The primary is an ``EmbeddedCluster`` (an environment's embedded cluster, or a test's scratch
one); the standby and the pooler live beside it (``<primary dir>-standby``,
``<primary dir>-pgbouncer``). The standby streams through a physical replication slot as a
dedicated replication role whose password stays in a 0600 passfile the server account reads,
never in ``primary_conninfo`` or a command line.

``start`` is idempotent and is setup: it creates the replication role, the slot and the
standby when they do not exist. ``stop`` stops the three processes and keeps their data;
``destroy`` removes the standby and pooler (the primary is its owner's to remove).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster.embedded import ClusterStatus, EmbeddedCluster
from pytest_hokmdb.cluster.pgbouncer import POOLER_ADMIN, PgBouncer, PoolerStatus  # noqa: F401 - POOLER_ADMIN is part of this module's API
from pytest_hokmdb.cluster.process import environment_for, run_as
from pytest_hokmdb.cluster.scratch import OWNER_FILE
from pytest_hokmdb.errors import ClusterError
from pytest_hokmdb.redaction import register_secret

log = logging.getLogger(__name__)

REPLICATION_ROLE = "hokmdb_replicator"
SLOT = "hokmdb_standby"
STANDBY_NAME = "hokmdb_standby"

@dataclass(frozen=True)
class TopologyStatus:
    primary: ClusterStatus
    standby: ClusterStatus
    pooler: PoolerStatus

    def describe(self) -> str:
        return "\n".join((
            "primary " + self.primary.describe(),
            "standby " + self.standby.describe(),
            self.pooler.describe(),
        ))

    @property
    def running(self) -> bool:
        return self.primary.running and self.standby.running and self.pooler.running


class LocalTopology:
    """Primary + streaming standby + PgBouncer, run by hokmdb from the machine's packages."""

    def __init__(self, primary: EmbeddedCluster, *, pooler_roles: tuple[str, ...] = ()) -> None:
        self.primary = primary
        base = primary.base_dir
        self.standby = EmbeddedCluster(
            base.with_name(base.name + "-standby"),
            bin_dir=primary.bin_dir,
            os_user=primary.user.name if primary.user.switches else None,
            settings=dict(primary.settings),
        )
        self.pooler = PgBouncer(base.with_name(base.name + "-pgbouncer"), primary.user)
        self.pooler_roles = pooler_roles

    def _adopt_owner(self, directory: Path) -> None:
        """A scratch primary's owner owns its standby and pooler too: the janitor removes all three."""
        owner = self.primary.base_dir / OWNER_FILE
        if owner.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(owner, directory / OWNER_FILE)

    # -- state ---------------------------------------------------------------------------------

    def status(self) -> TopologyStatus:
        return TopologyStatus(self.primary.status(), self.standby.status(), self.pooler.status())

    @property
    def standby_port(self) -> int:
        return self.standby.port

    @property
    def pooler_port(self) -> int:
        return self.pooler.port

    # -- commands --------------------------------------------------------------------------------

    def start(self) -> TopologyStatus:
        """Start (creating what is missing) the primary, the standby and PgBouncer; idempotent."""
        self.primary.start()
        self._adopt_owner(self.standby.base_dir)
        self._adopt_owner(self.pooler.base_dir)
        password = run_sync(self._ensure_replication_role())
        if self.standby.initialized() and not run_sync(self._admin(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", SLOT)):
            # Dropped by ``stop`` (or by hand): the WAL since the standby stopped may be gone.
            log.info("the standby's slot %s is not on the primary (dropped when the topology stopped): cloning the "
                     "standby again", SLOT)
            self._clone_standby(password)
        elif not self.standby.initialized():
            self._clone_standby(password)
        self._write_passfile(password)
        self.standby.start()
        self._wait_streaming()
        self.refresh_pooler()
        return self.status()

    def refresh_pooler(self) -> None:
        """(Re)start PgBouncer with the current roles' SCRAM verifiers (after roles change)."""
        self.pooler.serve(self.primary.admin_connect_kwargs(), backend_port=self.primary.port, roles=self.pooler_roles)

    def stop(self) -> TopologyStatus:
        """Stop PgBouncer, the standby and the primary (in that order); keeps their data, and
        drops the standby's slot: a slot nobody streams from keeps every WAL segment and (with
        hot_standby_feedback) the xmin the standby last reported, so the primary, running alone
        later, would pile up WAL and VACUUM nothing newer. ``start`` clones the standby again."""
        self.pooler.stop()
        self.standby.stop()
        if self.primary.is_running():
            run_sync(self._admin(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                SLOT,
            ))
        self.primary.stop()
        return self.status()

    def destroy(self) -> None:
        """Remove the standby and the pooler (and the primary's slot if it runs)."""
        self.pooler.stop()
        self.standby.destroy()
        shutil.rmtree(self.pooler.base_dir, ignore_errors=True)
        if self.primary.is_running():
            run_sync(self._admin(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                SLOT,
            ))

    # -- pieces ----------------------------------------------------------------------------------

    def _state(self) -> dict[str, object]:
        try:
            return json.loads(self.primary.state_file.read_text())
        except (OSError, ValueError):
            return {}

    async def _admin(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(**self.primary.admin_connect_kwargs())  # type: ignore[arg-type]
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def _ensure_replication_role(self) -> str:
        """The replication role's password, kept in the primary's state file (0600)."""
        state = self._state()
        passwords: dict[str, str] = dict(state.get("app_passwords", {}))  # type: ignore[arg-type]
        password = passwords.get(REPLICATION_ROLE) or secrets.token_urlsafe(24)
        register_secret(password)
        conn = await asyncpg.connect(**self.primary.admin_connect_kwargs())  # type: ignore[arg-type]
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", REPLICATION_ROLE)
            verb = "ALTER" if exists else "CREATE"
            await conn.execute(await conn.fetchval(
                f"SELECT format('{verb} ROLE %I LOGIN REPLICATION NOSUPERUSER PASSWORD %L', $1::text, $2::text)",
                REPLICATION_ROLE, password,
            ))
        finally:
            await conn.close()
        if passwords.get(REPLICATION_ROLE) != password:
            passwords[REPLICATION_ROLE] = password
            state["app_passwords"] = passwords
            self.primary.state_file.write_text(json.dumps(state, indent=2))
            self.primary.state_file.chmod(0o600)
        return password

    @property
    def _passfile(self) -> Path:
        return self.standby.base_dir / ".pgpass"

    def _write_passfile(self, password: str) -> None:
        self.standby.base_dir.mkdir(parents=True, exist_ok=True)
        self._passfile.write_text(f"127.0.0.1:{self.primary.port}:*:{REPLICATION_ROLE}:{password}\n")
        self._passfile.chmod(0o600)
        if self.primary.user.switches:
            os.chown(self._passfile, self.primary.user.uid, self.primary.user.gid)
        self._write_conninfo()

    def _write_conninfo(self) -> None:
        """primary_conninfo names the passfile, never the password; rewritten on every start
        because the primary's port may change."""
        conninfo = (f"host=127.0.0.1 port={self.primary.port} user={REPLICATION_ROLE} passfile={self._passfile} "
                    f"application_name={STANDBY_NAME} sslmode=disable")
        # hot_standby_feedback: the primary keeps the rows the standby's queries still read (a
        # backup taken from the standby is one long query), rather than cancelling them.
        self.standby.settings.update(primary_conninfo=conninfo, primary_slot_name=SLOT, hot_standby="on",
                                     hot_standby_feedback="on")

    def _clone_standby(self, password: str) -> None:
        """``pg_basebackup`` of the running primary into the standby's data directory, creating
        the replication slot it streams from (standby.signal written by ``-R``)."""
        self.standby.base_dir.mkdir(parents=True, exist_ok=True)
        self.standby.base_dir.chmod(0o755 if self.primary.user.switches else 0o700)
        if self.standby.data_dir.exists():
            shutil.rmtree(self.standby.data_dir)  # a half-made clone from an interrupted start
        self._write_passfile(password)
        run_sync(self._admin(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", SLOT,
        ))
        self.standby._own(self.standby.data_dir)  # noqa: SLF001 - the same process manager, another directory
        env = environment_for(self.primary.user, PGPASSFILE=str(self._passfile))
        try:
            result = run_as(self.primary.user, [
            str(self.primary.bin_dir / "pg_basebackup"),
            "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", REPLICATION_ROLE,
            "-D", str(self.standby.data_dir),
            "-X", "stream", "-C", "-S", SLOT, "-R", "--checkpoint=fast", "--no-password",
            *(["--no-sync"] if self.primary.settings.get("fsync") == "off" else []),
            ], env=env, cwd=self.standby.base_dir, timeout=3600)
        except subprocess.TimeoutExpired:
            raise ClusterError("pg_basebackup of the primary did not finish within an hour") from None
        if result.returncode != 0:
            shutil.rmtree(self.standby.data_dir, ignore_errors=True)
            raise ClusterError(
                f"pg_basebackup of the primary failed (exit {result.returncode}): {result.stderr.strip()[-300:]}",
                hint=f"the primary's log: {self.primary.log_file}",
            )
        # -R wrote primary_conninfo into postgresql.auto.conf; ours (in hokmdb.conf, passfile,
        # current port) is the one to use: drop theirs so nothing names a stale port.
        auto = self.standby.data_dir / "postgresql.auto.conf"
        if auto.exists():
            kept = [line for line in auto.read_text().splitlines() if not line.startswith(("primary_conninfo", "primary_slot_name"))]
            auto.write_text("\n".join(kept) + "\n")
        # The standby connects as the same superuser, whose password came along in the clone.
        self.standby._write_state(superuser_password=self.primary.superuser_password, created_by="pg_basebackup")  # noqa: SLF001
        log.info("standby cloned from the primary on port %s (slot %s)", self.primary.port, SLOT)

    def _wait_streaming(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = run_sync(self._admin("SELECT state FROM pg_stat_replication WHERE application_name = $1", STANDBY_NAME))
            if rows and rows[0]["state"] == "streaming":
                return
            time.sleep(0.1)
        raise ClusterError(
            f"the standby did not start streaming from the primary within {timeout_s:.0f} s",
            hint=f"the standby's log: {self.standby.log_file}",
        )


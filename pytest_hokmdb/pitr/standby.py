"""Is the standby fit to copy a backup from? hokmdb's look before pgBackRest's ``backup-standby``.

pgBackRest finds some of this out itself, but late or not at all: a stopped standby fails
the backup with "unable to find standby cluster" and ``check`` passes with a warning; a
standby whose replay is paused makes the backup wait ``archive-timeout`` before failing. So
hokmdb asks first, over the route pgBackRest takes (``psql`` as the server account, through
the unix socket, as ``pg_user``: if hokmdb gets in, so does pgBackRest), and refuses with one
message naming what is wrong:

* the standby answers and is in recovery (a promoted one is not a standby any more);
* it is a copy of this primary (same system identifier), not of another cluster;
* its replay is not paused, and its WAL receiver streams from the primary on the primary's
  timeline (after a promotion or a point-in-time restore of the primary it must be rebuilt).

A backup from the standby never falls back to the primary: that is the load it is meant
to spare.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_hokmdb.cluster.archive.settings import PitrSetup, StandbyLocation
from pytest_hokmdb.cluster.process import environment_for, run_as
from pytest_hokmdb.errors import BackupError
from pytest_hokmdb.pitr.errors import printable
from pytest_hokmdb.pitr.wal import Lsn
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.pitr")

SETTING = "physical.backup_standby"
FALLBACK_HINT = "or set physical.backup_standby to false to back up from the primary"
# How long a standby that is in recovery but not (yet) streaming gets to start streaming: its
# WAL receiver retries every few seconds after the primary restarted (as hokmdb's own restart
# of an embedded primary to turn archiving on does).
STREAMING_GRACE_S = 10.0
_FIELD_SEP = "\x1f"
_PRIMARY_SQL = (
    "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()), "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, pg_current_wal_lsn()"
)
_STANDBY_SQL = (
    "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()), "
    "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, "
    "(SELECT status FROM pg_stat_wal_receiver), (SELECT received_tli FROM pg_stat_wal_receiver), "
    "pg_last_wal_replay_lsn()"
)


class StandbyNotReady(BackupError):
    """The standby a backup is to be copied from cannot serve it (exit code 7)."""


@dataclass(frozen=True)
class StandbyState:
    """The standby as it was when hokmdb looked, just before the backup started."""

    location: StandbyLocation
    timeline: int
    replay_lsn: Lsn
    behind_bytes: int

    def describe(self) -> str:
        """The backup's ``source``: which standby, and how current it was (pgBackRest then waits
        for it to replay up to the backup's start)."""
        behind = f"{self.behind_bytes} bytes of WAL behind the primary" if self.behind_bytes > 0 else "caught up with the primary"
        return f"{self.location.describe()}: streaming on timeline {self.timeline}, replayed up to LSN {self.replay_lsn}, {behind}"


def _psql(setup: PitrSetup) -> str:
    """The server's own psql (Debian's server bin dir has one), else the one on PATH."""
    own = setup.bin_dir / "psql"
    if own.is_file():
        return str(own)
    found = shutil.which("psql")
    if found is None:
        raise BackupError(
            f"{SETTING}: psql is not installed; hokmdb uses it to check the standby before the backup",
            hint="install the PostgreSQL client (Debian: apt-get install postgresql-client)",
        )
    return found


def _query(setup: PitrSetup, socket_dir: Path, port: int, sql: str, what: str, *, hint: str) -> list[str]:
    """One row of ``sql`` on the server at ``socket_dir``/``port``, as the server account and
    ``pg_user`` (no password: the socket's own authentication, as pgBackRest connects);
    ``hint`` says what to check when it cannot connect."""
    env = environment_for(
        setup.user, PGHOST=str(socket_dir), PGPORT=str(port), PGUSER=setup.settings.pg_user,
        PGDATABASE="postgres", PGCONNECT_TIMEOUT="5", PGAPPNAME="hokmdb backup-standby check",
    )
    args = [_psql(setup), "-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-F", _FIELD_SEP, "-c", sql]
    try:
        result = run_as(setup.user, args, env=env, cwd=setup.work_dir, timeout=30)
    except subprocess.TimeoutExpired:
        raise StandbyNotReady(f"{SETTING}: {what} did not answer within 30s", hint=hint) from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = redact(printable(lines[0] if lines else f"psql exit {result.returncode}"))
        raise StandbyNotReady(
            f"{SETTING}: cannot connect to {what} over its socket {socket_dir} (port {port}): "
            f"{reason.removeprefix('psql: error: ')}",
            hint=hint,
        )
    return result.stdout.strip().split(_FIELD_SEP)


def _problem(standby: list[str], primary: list[str]) -> str | None:
    """What keeps the standby from serving the backup, from its row and the primary's; None: nothing."""
    in_recovery, system_id, paused, receiver, tli = standby[:5]
    if in_recovery != "t":
        return "is not in recovery (promoted?), so it is not a standby of the primary any more"
    if system_id != primary[1]:
        return (f"is a copy of another cluster (system identifier {system_id}, the primary's is {primary[1]}); "
                "point physical.standby_pg_data at a standby of this primary")
    if paused == "t":
        return "has its WAL replay paused (run SELECT pg_wal_replay_resume() on it)"
    if receiver != "streaming":
        return f"is not streaming from the primary (WAL receiver: {receiver or 'not running'})"
    if tli and int(tli) != int(primary[2]):
        return (f"streams timeline {tli} but the primary is on timeline {primary[2]} (the primary was promoted or "
                "restored to a point in time): rebuild the standby")
    return None


def standby_state(setup: PitrSetup, *, grace_s: float = STREAMING_GRACE_S) -> StandbyState:
    """Check the standby of ``setup`` against its primary; raises ``StandbyNotReady`` saying why
    it cannot serve a backup. A standby that is not streaming yet gets ``grace_s`` to start."""
    location = setup.standby
    if location is None:
        raise StandbyNotReady(f"{SETTING} is set but no standby was found to copy the backup from", hint=FALLBACK_HINT)
    primary = _query(setup, setup.socket_dir, setup.pg_port, _PRIMARY_SQL, f"the primary {setup.pg_data}",
                     hint="check that it runs, and physical.pg_port and pg_socket_dir")
    if primary[0] == "t":
        raise StandbyNotReady(
            f"{SETTING}: the primary {setup.pg_data} (physical.pg_data) is itself in recovery",
            hint="point physical.pg_data/pg_port at the primary",
        )
    deadline = time.monotonic() + grace_s
    while True:
        row = _query(setup, location.socket_dir, location.port, _STANDBY_SQL, f"the {location.describe()}",
                     hint=f"start it, check physical.standby_pg_port and standby_pg_socket_dir, {FALLBACK_HINT}")
        problem = _problem(row, primary)
        if problem is None:
            break
        if not problem.startswith("is not streaming") or time.monotonic() >= deadline:
            raise StandbyNotReady(
                f"{SETTING}: the {location.describe()} {problem}",
                hint=f"fix the standby (pytest smoke/ -k topology names what is wrong), {FALLBACK_HINT}",
            )
        time.sleep(0.5)
    replayed = Lsn.parse(row[5])
    state = StandbyState(
        location=location,
        timeline=int(row[4]),
        replay_lsn=replayed,
        behind_bytes=max(0, Lsn.parse(primary[3]) - replayed),
    )
    log.info("the backup is copied from the %s", state.describe())
    return state

"""Online data migrations: a backfill in small committed batches, for the middle phase of
expand / backfill / contract.

A data change written as one ``UPDATE`` holds its row locks (and, next to DDL, the table's
ACCESS EXCLUSIVE lock) for as long as the whole table takes. Called from a revision,
:func:`backfill` instead runs outside the revision's transaction (alembic's
``autocommit_block``) and updates ``batch_size`` rows at a time, each batch its own short
transaction, so the game's own writes wait for one batch at most::

    from pytest_hokmdb.migration.online import backfill

    def upgrade() -> None:
        backfill("moves", set_=SPLIT_CARD, where="card_suit IS NULL AND card IS NOT NULL")

What makes it safe to kill and run again:

* the ``where`` predicate says which rows still need the change, so every batch is
  idempotent and a re-run (after ``kill -9``, a lost connection or a cancelled deploy)
  starts at the first row that still needs it: it continues where it stopped;
* batches follow the primary key (``key``), so each one is an index range scan;
* rows written while it runs must be kept right by the expand phase (a trigger, or the
  application writing both forms); a final pass re-checks the predicate and picks up rows
  that arrived behind the cursor, and the helper fails naming the count if any remain.

A batch never waits for a row the game holds: it updates only the rows of its key range that
no one has locked (``FOR UPDATE SKIP LOCKED``) and leaves the others to a later pass. A
batch that waited on a game's row while holding a thousand of its own could close a cycle
with game transactions waiting on those (the deadlocks of issue 31, whose victim was the
game); a batch that waits on nothing is in no cycle, and the game waits for one batch at most.
Rows skipped this way are picked up by the next pass, which repeats while rows are left and
their number goes down.

Throttling: the batch size is steered by its latency: a batch that takes longer than
``max_batch_ms`` halves the next (down to ``MIN_BATCH_SIZE``), one that takes less than
half of it doubles the next (up to ``MAX_GROWTH`` times ``batch_size``: the round trips and
the pause are paid per batch, while a row is held only for one batch's time), and while other sessions wait for a
lock the helper pauses before its next batch. While a streaming standby has more than
``max_replica_lag_bytes`` of WAL left to replay it waits for the standby to come back to
half that (a backfill writes WAL far faster than a busy standby replays it); a standby that
replays nothing for ``REPLICA_STALL_S`` fails the backfill, naming it. Settings come from the deploy
(``deploy.backfill_batch_size`` / ``deploy.backfill_pause_ms``, passed in the alembic
config's attributes), else from the call, else the defaults below.

``alembic upgrade --sql`` (offline) renders one plain ``UPDATE`` with a marker comment, so
scripts and the lint see what the backfill does.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from pytest_hokmdb.console import interactive, progress

log = logging.getLogger("hokmdb.backfill")

DEFAULT_BATCH_SIZE = 1000
DEFAULT_PAUSE_MS = 10
DEFAULT_MAX_BATCH_MS = 200
MIN_BATCH_SIZE = 50
MAX_GROWTH = 20  # a batch grows up to this many times the configured size while batches stay quick
FINAL_PASSES = 3  # passes in a row that leave as many rows as the pass before: the expand phase is broken
PASS_PAUSE_S = 0.2  # between passes, so that the game's transactions holding skipped rows can end
HELD_ROWS_WAIT_S = 60.0  # how long rows left only because others hold them are waited for
DEFAULT_MAX_REPLICA_LAG_BYTES = 64 * 1024 * 1024
REPLICA_STALL_S = 120.0
MARKER = "-- hokmdb:backfill"
ATTRIBUTE = "hokmdb_backfill"  # alembic Config.attributes key the deploy sets
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


@dataclass(frozen=True)
class BackfillSettings:
    batch_size: int = DEFAULT_BATCH_SIZE
    pause_ms: int = DEFAULT_PAUSE_MS
    max_batch_ms: int = DEFAULT_MAX_BATCH_MS
    max_replica_lag_bytes: int = DEFAULT_MAX_REPLICA_LAG_BYTES  # 0: do not wait for standbys
    # Backfills this deploy finished, by (database, table, set, where): when the revision's DDL
    # after the backfill meets a lock timeout, the retry re-runs upgrade(), and a finished
    # backfill must not re-scan the table (40.9M rows: 50 s, long enough for the next long
    # transaction to start and take the retry's chance). The expand phase keeps new rows right.
    # Checks that passed (``check_once``) are kept here too, by ("check", database, sql, "").
    finished: set[tuple[str, str, str, str]] = field(default_factory=set, compare=False, repr=False)


@dataclass
class BackfillReport:
    table: str
    rows: int = 0
    batches: int = 0
    seconds: float = 0.0
    throttled: int = 0
    resumed_at: Any = None
    replica_waits: int = 0
    replica_wait_s: float = 0.0
    replica_peak_bytes: int = 0


class BackfillError(RuntimeError):
    """The backfill could not finish; the message names the table and what is left."""


def _settings(batch_size: int | None, pause_ms: int | None) -> BackfillSettings:
    """The revision's own choice first (it knows its table), then the deploy's, then the defaults."""
    from alembic import context

    try:
        configured = context.config.attributes.get(ATTRIBUTE)
    except Exception:  # noqa: BLE001 - no alembic run in progress
        configured = None
    base = configured or BackfillSettings()
    return BackfillSettings(
        batch_size=batch_size if batch_size is not None else base.batch_size,
        pause_ms=pause_ms if pause_ms is not None else base.pause_ms,
        max_batch_ms=base.max_batch_ms,
        max_replica_lag_bytes=base.max_replica_lag_bytes,
        finished=base.finished,
    )


def backfill(
    table: str, *, set_: str, where: str, key: str = "id", batch_size: int | None = None, pause_ms: int | None = None,
) -> BackfillReport | None:
    """Update ``table`` with ``SET set_`` for every row matching ``where``, in committed batches.

    Call it from a revision's ``upgrade()``/``downgrade()``, as the revision's only work (the
    expand DDL belongs to the revision before, the contract DDL to the one after): it
    commits what ran before it. ``None`` in offline mode."""
    from alembic import context, op

    for name in (table, key):
        if not _IDENT.match(name):
            raise ValueError(f"backfill: {name!r} is not a plain (optionally schema-qualified) identifier")
    statement = f"UPDATE {table} SET {set_} WHERE {where}"
    if context.is_offline_mode():
        op.execute(f"{MARKER} {table}: run online in batches of {batch_size or DEFAULT_BATCH_SIZE} rows\n{statement}")
        return None
    settings = _settings(batch_size, pause_ms)
    bind = op.get_bind()
    done_key = (_database(bind), table, set_, where)
    if done_key in settings.finished:
        log.info("backfill %s: finished earlier in this deploy; not scanning again", table)
        # Still end the transaction here, as the first run did: what ran before (0006's
        # triggers: SHARE ROW EXCLUSIVE on moves) must not stay held while the DDL after this
        # waits for a stronger lock. Holding it, the retry waited for the game while the game
        # waited for it, and the game was the deadlock victim (issue 31).
        with op.get_context().autocommit_block():
            pass
        return BackfillReport(table)
    with op.get_context().autocommit_block():
        report = run_backfill(bind, table, set_=set_, where=where, key=key, settings=settings)
    settings.finished.add(done_key)
    return report


def _database(bind: Any) -> str:
    """The database a revision runs on: what the per-deploy memo of finished work is keyed by."""
    return str(bind.exec_driver_sql("SELECT current_database()").scalar())


def check_once(sql: str) -> None:
    """Run a read-only check of the data (e.g. "every row was converted") outside the
    revision's transaction, once per deploy.

    The check belongs between a backfill and the DDL that needs its result; when that DDL
    meets a lock timeout the retry re-runs ``upgrade()``, and a check that scans the whole
    table (50 s at 40.9M rows) must not run again: the next long transaction would start and
    take the retry's chance every time. Once it passed it stays true, because the expand
    phase's trigger keeps new rows right. Offline mode prints it."""
    from alembic import context, op

    if context.is_offline_mode():
        op.execute(sql)
        return
    settings = _settings(None, None)
    done_key = ("check", _database(op.get_bind()), sql, "")
    if done_key in settings.finished:
        log.info("check passed earlier in this deploy; not scanning again")
        with op.get_context().autocommit_block():
            pass  # the same transaction boundary as the first run (see backfill())
        return
    with op.get_context().autocommit_block():
        op.execute(sql)
    settings.finished.add(done_key)


_REPLICA_LAG = sa.text(
    "SELECT coalesce(application_name, '') AS name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS behind "
    "FROM pg_stat_replication WHERE state = 'streaming'"
)


def _wait_for_standbys(bind: Any, table: str, limit: int, report: BackfillReport) -> None:
    """Pause while a standby is more than ``limit`` bytes behind, until it is under half of it."""
    rows = bind.execute(_REPLICA_LAG).all()
    if not rows:
        return
    if any(r.behind is None for r in rows):
        if not report.replica_waits:
            log.warning("backfill %s: this role cannot see the standbys' replay position (pg_read_all_stats), so it "
                        "cannot wait for them; the deploy's replay wait after the revision still checks them", table)
            report.replica_waits = -1
        return
    worst = max(r.behind for r in rows)
    report.replica_peak_bytes = max(report.replica_peak_bytes, worst)
    if worst <= limit:
        return
    report.replica_waits += 1
    started = last_progress = time.monotonic()
    best = worst
    log.info("backfill %s: a standby is %d bytes behind (over %d): waiting for it to replay", table, worst, limit)
    while worst > limit // 2:
        time.sleep(0.1)
        rows = bind.execute(_REPLICA_LAG).all()
        if not rows:
            break
        worst = max(r.behind or 0 for r in rows)
        if worst < best:
            best, last_progress = worst, time.monotonic()
        elif time.monotonic() - last_progress > REPLICA_STALL_S:
            laggard = max(rows, key=lambda r: r.behind or 0)
            raise BackfillError(
                f"backfill of {table} stopped: standby {laggard.name or '(no application_name)'} replayed nothing for "
                f"{REPLICA_STALL_S:.0f}s and is {worst} bytes behind; check it (replay paused? disk full?), then deploy "
                "again: the backfill continues where it stopped"
            )
    report.replica_wait_s += time.monotonic() - started


def run_backfill(bind: Any, table: str, *, set_: str, where: str, key: str = "id",
                 settings: BackfillSettings = BackfillSettings()) -> BackfillReport:
    """The batch loop on an autocommit SQLAlchemy connection (each statement commits)."""
    report = BackfillReport(table)
    started = time.monotonic()
    pending = sa.text(f"SELECT count(*) FROM {table} WHERE {where}")
    first = sa.text(f"SELECT min({key}) FROM {table} WHERE {where}")
    total = int(bind.execute(pending).scalar() or 0)
    if total == 0:
        log.info("backfill %s: nothing to do", table)
        return report
    report.resumed_at = bind.execute(first).scalar()
    log.info("backfill %s: %d rows need it, starting at %s %s (batches of %d)", table, total, key, report.resumed_at,
             settings.batch_size)
    boundary = sa.text(f"SELECT {key} FROM {table} WHERE {key} >= :lo ORDER BY {key} OFFSET :n LIMIT 1")
    # Only rows no one holds: the batch never waits for the game (see the module's docstring).
    update = sa.text(f"UPDATE {table} SET {set_} WHERE {key} IN (SELECT {key} FROM {table} WHERE {key} >= :lo "
                     f"AND {key} < :hi AND ({where}) FOR UPDATE SKIP LOCKED)")
    update_tail = sa.text(f"UPDATE {table} SET {set_} WHERE {key} IN (SELECT {key} FROM {table} WHERE {key} >= :lo "
                          f"AND ({where}) FOR UPDATE SKIP LOCKED)")
    waiting = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
    size = settings.batch_size
    left = total
    stuck = 0
    held_since: float | None = None
    # Rows still needing the change that no one holds (locking them for the statement only).
    free = sa.text(f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} FOR UPDATE SKIP LOCKED) AS free")
    with progress(f"backfill {table}", total, enabled=interactive()) as advance:
        while True:
            lo = bind.execute(first).scalar()
            while lo is not None:
                hi = bind.execute(boundary, {"lo": lo, "n": size}).scalar()
                t0 = time.monotonic()
                if hi is None:
                    done = bind.execute(update_tail, {"lo": lo}).rowcount
                else:
                    done = bind.execute(update, {"lo": lo, "hi": hi}).rowcount
                took_ms = (time.monotonic() - t0) * 1000
                report.rows += max(done, 0)
                report.batches += 1
                advance(max(done, 0))
                lo = hi
                if took_ms > settings.max_batch_ms and size > MIN_BATCH_SIZE:
                    size = max(MIN_BATCH_SIZE, size // 2)
                    report.throttled += 1
                elif took_ms < settings.max_batch_ms / 2 and size < settings.batch_size * MAX_GROWTH:
                    # Quick batches grow: the per-batch round trips and pause are paid per batch,
                    # while a row is held for one batch's time, which max_batch_ms bounds.
                    size = min(settings.batch_size * MAX_GROWTH, size * 2)
                pause = settings.pause_ms / 1000
                if bind.execute(waiting).scalar():
                    pause = max(pause, took_ms / 1000)  # others wait for a lock: give them a batch's time
                    report.throttled += 1
                if pause > 0:
                    time.sleep(pause)
                if settings.max_replica_lag_bytes:
                    _wait_for_standbys(bind, table, settings.max_replica_lag_bytes, report)
            before, left = left, int(bind.execute(pending).scalar() or 0)
            if left == 0:
                break
            if left < before:
                stuck, held_since = 0, None
            elif int(bind.execute(free).scalar() or 0) == 0:
                # Every row left is held by another transaction: wait for them to end, bounded.
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since > HELD_ROWS_WAIT_S:
                    raise BackfillError(
                        f"backfill of {table} left {left} row(s) matching {where!r} that other transactions held for "
                        f"{HELD_ROWS_WAIT_S:.0f}s: find them in pg_locks / pg_stat_activity (a transaction left open?), "
                        "end them, then deploy again: the backfill continues where it stopped"
                    )
            else:
                stuck += 1
            if stuck >= FINAL_PASSES:
                raise BackfillError(
                    f"backfill of {table} left {left} row(s) matching {where!r} after {FINAL_PASSES} passes that did not "
                    "reduce them: rows keep arriving in the old form, or are held locked throughout; the expand revision "
                    "must keep new writes right (a trigger, or the application writing both forms) before the backfill runs"
                )
            log.info("backfill %s: %d rows left (held by others or arrived behind the cursor); another pass", table, left)
            time.sleep(PASS_PAUSE_S)
    report.seconds = time.monotonic() - started
    log.info("backfill %s: %d rows in %d batches, %.1fs (%d throttled)%s", table, report.rows, report.batches,
             report.seconds, report.throttled,
             f"; waited {report.replica_wait_s:.1f}s for standbys ({report.replica_waits} time(s), peak "
             f"{report.replica_peak_bytes} bytes behind)" if report.replica_waits > 0 else "")
    return report

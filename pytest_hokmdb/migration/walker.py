"""Round trips on one database per worker that walks up a linear history.

Why: a round trip of revision r needs a database at r's parent. Cloning one per test
costs a ``CREATE DATABASE`` (about 0.1 s, more as the catalog grows) and a connection,
and then the parent's catalog must be read again. A round trip ends with the database
at r and r's catalog in hand, which is exactly the state and the "before" snapshot the
next revision's round trip starts from. So each worker keeps one database and one open
connection, walks it forward to the parent of the next revision it is given (pytest
hands a worker its revisions in upgrade order, skipping those other workers run) and
reuses the snapshot when nothing was skipped. Per revision that is three steps and
three catalog reads, nothing else.

When the walker cannot be trusted, it starts again from an empty database: after any
failure (a failed round trip leaves the database anywhere), or when asked for a
revision below its position. A revision whose upgrade fails is remembered, so the
revisions after it fail at once with that revision's error instead of walking up to it
again. Branched or merged histories are not walked (the parent state of a merge is two
heads); ``test_roundtrip`` gives them template clones instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from pytest_hokmdb.migration.history import BASE, History, MigrationFailure, Revision
from pytest_hokmdb.migration.runner import StepFailed, Stepper, StepperSession, round_trip
from pytest_hokmdb.migration.snapshot import CatalogSnapshot


class Walker:
    """One worker's walking database (linear histories only)."""

    def __init__(
        self,
        history: History,
        create_database: Callable[[str], Any],
        drop_database: Callable[[str], None],
        prefix: str,
    ) -> None:
        if not history.is_linear:
            raise ValueError("the walker needs a linear history")
        self.history = history
        self._create = create_database
        self._drop = drop_database
        self._prefix = prefix
        self._counter = itertools.count(1)
        self._db: Any = None
        self._session: StepperSession | None = None
        self._position = -1  # index in history.ids of the revision the database is at; -1: base
        self._snapshot: CatalogSnapshot | None = None  # the catalog at _position, when known
        self._unreachable: tuple[int, MigrationFailure] | None = None
        # The downgrade floor (base, or the newest irreversible revision) as an index like
        # _position, and its catalog once this walker has seen it on the way up.
        floor = history.downgrade_floor
        self._floor = -1 if floor == BASE else history.ids.index(floor)
        self._floor_snapshot: CatalogSnapshot | None = None

    def round_trip(self, revision: Revision) -> None:
        index = self.history.ids.index(revision.id)
        parent = index - 1
        if self._unreachable is not None and parent >= self._unreachable[0]:
            raise MigrationFailure(f"{revision.label} cannot be tested: {self._unreachable[1]}")
        if self._session is None or self._position > parent:
            self._restart()
        assert self._session is not None

        def work(stepper: Stepper) -> CatalogSnapshot:
            if self._position < parent:
                try:
                    self._advance(stepper, parent)
                except MigrationFailure as failure:
                    raise MigrationFailure(f"{revision.label} cannot be tested: {failure}") from None
            before, self._snapshot = self._snapshot, None
            if parent == self._floor:
                self._floor_snapshot = before = before or stepper.snapshot()
            return round_trip(stepper, revision, before=before)

        try:
            self._snapshot = self._session.run(work)
        except BaseException:
            self.close()  # wherever the failure left the database, it is not at a known revision
            raise
        self._position = index

    def walk_to_head(self) -> CatalogSnapshot:
        """The catalog at head of this walker's database, which got there one revision per
        command (the round trips on the way included)."""
        head = len(self.history.ids) - 1
        if self._unreachable is not None:
            raise self._unreachable[1]
        if self._session is None or self._position > head:
            self._restart()
        assert self._session is not None

        def work(stepper: Stepper) -> CatalogSnapshot:
            if self._position < head:
                self._advance(stepper, head)
            return self._snapshot or stepper.snapshot()

        try:
            self._snapshot = self._session.run(work)
        except BaseException:
            self.close()
            raise
        return self._snapshot

    def downgrade_from_head(self) -> tuple[CatalogSnapshot, CatalogSnapshot] | None:
        """Downgrade from head to the floor in one command, when this walker is at head and
        saw the floor's catalog on its way up: ``(catalog at the floor, catalog after the
        downgrade)``. None when it cannot say (not at head, floor unseen): the caller then
        downgrades a clone of the head template instead. Saves that clone and the empty
        database its "before" was read from; the walker ends at the floor."""
        head = len(self.history.ids) - 1
        if self._session is None or self._position != head or self._floor_snapshot is None:
            return None
        floor_id = self.history.downgrade_floor
        floor_state = () if self._floor < 0 else (floor_id,)

        def work(stepper: Stepper) -> CatalogSnapshot:
            stepper.downgrade(floor_id)
            return stepper.snapshot_at(floor_state, f"downgrade {self.history.ids[head]} -> {floor_id}")

        try:
            after = self._session.run(work)
        except BaseException:
            self.close()
            raise
        self._position, self._snapshot = self._floor, after
        return self._floor_snapshot, after

    def _advance(self, stepper: Stepper, to: int) -> None:
        """Upgrade one revision per command (as a developer does) from here to ``to``,
        reading the floor's catalog on the way if it is passed unseen (an xdist worker's
        walker starts below its first revision): the one-command downgrade comes back to it."""
        if self._position == self._floor and self._floor_snapshot is None:
            self._floor_snapshot = self._snapshot or stepper.snapshot()
        self._snapshot = None
        for index in range(self._position + 1, to + 1):
            target = self.history.ids[index]
            try:
                stepper.upgrade(target)
            except StepFailed as failure:
                failure_here = MigrationFailure(f"the database cannot be upgraded to {target}: {failure}")
                self._unreachable = (index, failure_here)
                raise failure_here from None
            self._position = index
            if index == self._floor and self._floor_snapshot is None:
                self._floor_snapshot = stepper.snapshot()

    def _restart(self) -> None:
        self.close()
        self._db = self._create(f"{self._prefix}_{next(self._counter)}")
        self._session = StepperSession(self.history, self._db.url)
        self._position, self._snapshot = -1, None

    def close(self) -> None:
        """Close the connection and drop the database (the next round trip starts afresh)."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._db is not None:
            self._drop(self._db.name)
            self._db = None
        self._position, self._snapshot, self._floor_snapshot = -1, None, None

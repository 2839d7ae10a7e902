"""Template databases at the revision states tests ask for, built incrementally.

A test that needs a database at state S (head for the drift checks, a revision's parent
for its data fixture) gets one ``CREATE DATABASE ... TEMPLATE`` from a template at S.
Templates are built only for the states asked for: each from the nearest template
already built at an ancestor of S (else from an empty database) with one ``upgrade``
command, which runs the missing revisions in one env.py run. States are asked for in
upgrade order (pytest runs the parametrized tests that way), so a worker runs each
revision about once however many templates it builds, and the cost stays linear in the
number of revisions. (An earlier design kept one template per revision: N databases
of a few MB each per worker, a CREATE DATABASE per revision, and minutes spent deleting
them at the end of a long history's run.)

The template at head is the exception: it is always built from an empty database with
one ``upgrade head``, the way a deployment builds it, so ``test_upgrade`` compares its
catalog with the one a database reaches one revision per command.

A failure while building a template is remembered and raised again (naming the revision)
to every test that needs that state, without retrying the failed step once per test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from pytest_hokmdb.migration.history import History, MigrationFailure
from pytest_hokmdb.migration.runner import Stepper, with_stepper
from pytest_hokmdb.migration.snapshot import CatalogSnapshot

State = tuple[str, ...]


class TemplateCache:
    """Per-worker templates, keyed by the alembic heads they record."""

    def __init__(self, history: History, create_database: Callable[[str, str | None], Any], prefix: str,
                 base: str | None = None) -> None:
        """``base``: the template of an empty database (the project's prerequisites, see
        ``prerequisites.py``); None: a new database is empty already."""
        self.history = history
        self._base = base
        self._create = create_database
        self._prefix = prefix
        self._databases: dict[State, Any] = {}
        self._snapshots: dict[State, CatalogSnapshot] = {}
        self._failures: dict[State, MigrationFailure] = {}
        self._counter = itertools.count(1)

    def _order(self, revision_id: str) -> int:
        return self.history.ids.index(revision_id)

    def _nearest_built(self, state: State) -> State:
        """The built single-head state closest below ``state`` (``()``: start empty)."""
        below: set[str] = set()
        for head in state:
            below |= self.history.ancestors(head)
        candidates = [s for s in self._databases if len(s) == 1 and s[0] in below]
        return max(candidates, key=lambda s: self._order(s[0]), default=())

    def template(self, state: State) -> str | None:
        """Name of a template at ``state``; for base, the prerequisites' template or None (a
        new database is already empty)."""
        state = tuple(sorted(state))
        if not state:
            return self._base
        if state in self._databases:
            return self._databases[state].name
        if state in self._failures:
            raise MigrationFailure(f"the database at {', '.join(state)} cannot be built: {self._failures[state]}")
        start = () if state == tuple(sorted(self.history.heads)) else self._nearest_built(state)
        # Several heads (a merge's parents): upgrade to each in upgrade order.
        targets = [head for head in sorted(state, key=self._order) if head not in start]
        db = self._create(f"{self._prefix}_{next(self._counter)}", self.template(start))

        def build(stepper: Stepper) -> None:
            for target in targets:
                stepper.upgrade(target)
            stepper.expect_heads(state, f"upgrading to {', '.join(state)}")

        try:
            with_stepper(self.history, db.url, build)
        except MigrationFailure as failure:
            self._failures[state] = failure
            raise
        self._databases[state] = db
        return db.name

    def read_only(self, state: State) -> Any:
        """The template database at ``state`` itself, for checks that only read (the drift
        checks): no clone to pay for. Whoever writes to it corrupts every later clone."""
        self.template(state)
        return self._databases[tuple(sorted(state))]

    def snapshot(self, state: State) -> CatalogSnapshot | None:
        """The catalog of the template at ``state`` (None for base), read once."""
        state = tuple(sorted(state))
        if not state:
            return None
        if state not in self._snapshots:
            self.template(state)
            self._snapshots[state] = with_stepper(
                self.history, self._databases[state].url, lambda stepper: stepper.snapshot()
            )
        return self._snapshots[state]

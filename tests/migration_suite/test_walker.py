"""The suite's fast paths keep their promises, on a real cluster: the walker's one-command
downgrade compares with the catalog it saw on the way up, one snapshot statement prepared
per connection still sees every later DDL, single steps are planned as alembic plans them,
and an edited env.py is run as edited.

The suite-level proofs (a broken history fails the right tests) are in
``test_broken_histories.py``; these pin the mechanisms those runs rely on to be quick.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_broken_histories import write_project

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.fixtures.throwaway import create_database, drop_database
from pytest_hokmdb.migration.envpy import run_env_py
from pytest_hokmdb.migration.history import History, load_history
from pytest_hokmdb.migration.runner import StepperSession, with_stepper
from pytest_hokmdb.migration.settings import load_settings
from pytest_hokmdb.migration.walker import Walker


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> History:
    """The broken-histories shop project (a1 -> a2 -> a3), healthy, loaded as the plugin does."""
    root = write_project(tmp_path / "shop")
    monkeypatch.syspath_prepend(str(root))
    return load_history(load_settings(root))


@pytest.fixture
def walker(shop: History, hokmdb_cluster: EmbeddedCluster) -> Iterator[Walker]:
    made = Walker(
        shop,
        lambda name: create_database(hokmdb_cluster, name),
        lambda name: drop_database(hokmdb_cluster, name),
        prefix=f"walk_test_{os.getpid()}",
    )
    try:
        yield made
    finally:
        made.close()


def test_the_walker_downgrades_from_head_against_the_catalog_it_saw_at_the_floor(
    shop: History, walker: Walker
) -> None:
    assert walker.downgrade_from_head() is None  # nowhere yet: the caller clones the head template
    for revision in shop.revisions:
        walker.round_trip(revision)
    walked = walker.downgrade_from_head()
    assert walked is not None
    at_floor, after = walked
    assert after == at_floor and not [line for line in after.lines() if line.startswith("relation ")], after.lines()

    # Up again, then something the history never made: the one-command downgrade cannot
    # remove it, and the comparison shows it as a trace.
    for revision in shop.revisions:
        walker.round_trip(revision)
    session = walker._session
    assert session is not None
    session.run(lambda stepper: (stepper.connection.exec_driver_sql("CREATE TABLE stray (id int)"),
                                 stepper.connection.commit()))
    walked = walker.downgrade_from_head()
    assert walked is not None
    at_floor, after = walked
    assert "+relation public.stray: kind=r" in at_floor.diff(after), at_floor.diff(after)


def test_a_prepared_snapshot_sees_every_later_ddl(shop: History, hokmdb_cluster: EmbeddedCluster) -> None:
    """The snapshot statement is prepared once per connection and reused across DDL."""
    db = create_database(hokmdb_cluster, f"snap_{os.getpid()}")
    session = StepperSession(shop, db.url)
    try:
        stepper = session.stepper
        empty = session.run(lambda _: stepper.snapshot())
        session.run(lambda _: stepper.upgrade("a1"))
        at_a1 = session.run(lambda _: stepper.snapshot())
        assert "+relation public.items: kind=r" in empty.diff(at_a1)
        session.run(lambda _: (stepper.connection.exec_driver_sql("COMMENT ON TABLE items IS 'catalogue'"),
                               stepper.connection.commit()))
        commented = session.run(lambda _: stepper.snapshot())
        assert "comment=catalogue" in commented.diff(at_a1, before="commented", after="a1"), commented.lines()
        session.run(lambda _: stepper.downgrade("base"))
        assert session.run(lambda _: stepper.snapshot()) == empty
    finally:
        session.close()
        drop_database(hokmdb_cluster, db.name)


def test_single_steps_are_planned_as_alembic_plans_them(shop: History, hokmdb_cluster: EmbeddedCluster) -> None:
    """``Stepper.plan`` builds one-revision steps itself; they must be alembic's own."""
    db = create_database(hokmdb_cluster, f"plan_{os.getpid()}")
    script = shop.script

    def same(direction: str, target: str, heads: tuple[str, ...]) -> None:
        ours = with_stepper(shop, db.url, lambda stepper: stepper.plan(direction, target, heads))
        theirs = script._upgrade_revs(target, heads) if direction == "upgrade" else script._downgrade_revs(target, heads)
        assert [(s.revision.revision, s.is_upgrade) for s in ours] == [
            (s.revision.revision, s.is_upgrade) for s in theirs], (direction, target, heads)

    try:
        assert shop.is_chain
        for heads, target in (((), "a1"), (("a1",), "a2"), (("a2",), "a3")):
            same("upgrade", target, heads)
        for heads, target in ((("a3",), "a2"), (("a2",), "a1"), (("a1",), "base")):
            same("downgrade", target, heads)
        same("upgrade", "a3", ())  # several revisions: alembic's planner
        same("downgrade", "base", ("a3",))
    finally:
        drop_database(hokmdb_cluster, db.name)


class _Script:
    def __init__(self, path: Path) -> None:
        self.env_py_location = str(path)

    def run_env(self) -> None:  # only for a missing env.py, which these tests do not have
        raise AssertionError("run_env_py should have run env.py itself")


def test_an_edited_env_py_runs_as_edited(tmp_path: Path) -> None:
    """env.py is compiled once per process, but an edit (new size or mtime) is compiled again."""
    env_py = tmp_path / "env.py"
    seen: list[str] = []
    env_py.write_text("import builtins\nbuiltins._hokmdb_seen.append('first')\n")
    import builtins

    builtins._hokmdb_seen = seen  # type: ignore[attr-defined]
    try:
        run_env_py(_Script(env_py))
        run_env_py(_Script(env_py))
        env_py.write_text("import builtins\nbuiltins._hokmdb_seen.append('second, edited')\n")
        run_env_py(_Script(env_py))
    finally:
        del builtins._hokmdb_seen  # type: ignore[attr-defined]
    assert seen == ["first", "first", "second, edited"]

"""The migration suite fails broken histories, for the right reason, naming the revision.

Each test writes a small alembic project of its own (alembic.ini, env.py, versions/, a
models module, data fixtures and a pyproject.toml with ``[tool.hokmdb.migrations]``),
built from one healthy three-revision history with exactly one mistake put in, and runs
the real suite (``pytest --hokmdb-migrations``, with ``--hokmdb-migrations-project``)
against it. Each asserts the exact set of failing tests, so a healthy revision is never
blamed, and the failure message: the revision, the problem and the diff.

The lock-safety lint is left out of these runs (``--ignore test_lint.py``): it has broken
histories of its own in ``test_lint*.py``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "pytest_hokmdb" / "migration_suite"

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = .
path_separator = os
sqlalchemy.url = postgresql+asyncpg://nobody@127.0.0.1:1/nothing
"""

# The alembic cookbook's async env.py ("run_async_migrations"), plus the documented hook
# for a connection handed over by the caller.
ASYNC_ENV = '''\
"""Async env.py: the alembic cookbook pattern."""
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import async_engine_from_config

import shop_models

config = context.config
target_metadata = shop_models.metadata


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    engine = async_engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                      poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

# The cookbook's synchronous "sharing a connection" env.py.
SYNC_ENV = '''\
"""Sync env.py: the alembic cookbook's connection-sharing pattern."""
from alembic import context
from sqlalchemy import engine_from_config, pool

import shop_models

config = context.config
target_metadata = shop_models.metadata


def run_migrations_online():
    connectable = config.attributes.get("connection", None)
    if connectable is None:
        connectable = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                         poolclass=pool.NullPool)
        with connectable.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    else:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
'''

MODELS = '''\
"""Models of the shop test project at head."""
import sqlalchemy as sa

metadata = sa.MetaData()

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Enum("draft", "live", name="item_status"), nullable=False, server_default="draft"),
    sa.Column("price", sa.Numeric(10, 2), nullable=True),
    sa.Column("slug", sa.Text, nullable=False),{extra_columns}
    sa.CheckConstraint("price >= 0", name="ck_items_price_nonneg"),
    sa.Index("ix_items_name", "name"),
)
'''

DATA_FIXTURES = '''\
"""Data fixtures of the shop project: revision a3 fills slug from name and keeps every row."""
import asyncio

import asyncpg

from pytest_hokmdb.migration.fixtures import SeededData


def seed_items(dsn):
    async def insert():
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO items (name, status, price, slug) VALUES "
                "('Red Chair', 'draft', 10, 'red-chair'), ('Blue Lamp', 'live', 25.5, 'blue-lamp'), "
                "('Old Desk', 'draft', NULL, 'old-desk')"
            )
        finally:
            await conn.close()

    asyncio.run(insert())


def slugs_out_of_date(dsn):
    async def check():
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT id FROM items WHERE slug <> lower(replace(name, ' ', '-'))")
        finally:
            await conn.close()
        return [f"item {row['id']} has a stale slug" for row in rows]

    return asyncio.run(check())


SEEDED_DATA = [SeededData("seeded items", from_revision="a2", seed=seed_items, check=slugs_out_of_date)]

REVISION_DATA = {
    "a3": {
        "before": {"items": [{"id": 1, "name": "Red Chair", "status": "draft"},
                             {"id": 2, "name": "Blue Lamp", "status": "live"}]},
        "after": {"items": [{"id": 1, "name": "Red Chair", "slug": "red-chair"},
                            {"id": 2, "name": "Blue Lamp", "slug": "blue-lamp"}]},
    },
}
'''

HEADER = '''\
"""{doc}

Revision ID: {rev}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "{rev}"
down_revision = {down_repr}
branch_labels = None
depends_on = None

'''

A1 = """\
item_status = postgresql.ENUM("draft", "live", name="item_status", create_type=False)


def upgrade():
    item_status.create(op.get_bind())
    op.create_table(
        "items",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", item_status, nullable=False, server_default="draft"),
    )
    op.create_index("ix_items_name", "items", ["name"])


def downgrade():
    op.drop_index("ix_items_name", table_name="items")
    op.drop_table("items")
    item_status.drop(op.get_bind())
"""

A2 = """\
def upgrade():
    op.add_column("items", sa.Column("price", sa.Numeric(10, 2), nullable=True))
    op.create_check_constraint("ck_items_price_nonneg", "items", "price >= 0")


def downgrade():
    op.drop_constraint("ck_items_price_nonneg", "items", type_="check")
    op.drop_column("items", "price")
"""

A3 = """\
def upgrade():
    op.add_column("items", sa.Column("slug", sa.Text, nullable=True))
    op.execute("UPDATE items SET slug = lower(replace(name, ' ', '-'))"){extra_upgrade}
    op.alter_column("items", "slug", nullable=False)


def downgrade():
{downgrade}
"""

NOTES = """\
def upgrade():
    op.add_column("items", sa.Column("note", sa.Text))


def downgrade():
    op.drop_column("items", "note")
"""

A3_DOWNGRADE = '    op.drop_column("items", "slug")'

DOCS = {
    "a1": "Items: the catalogue's one table, with its status enum.",
    "a2": "Prices: nullable, never negative.",
    "a3": "Slugs for item URLs, filled from the names (a data migration).",
}


def write_project(
    root: Path,
    *,
    env: str = ASYNC_ENV,
    bodies: dict[str, str] | None = None,
    docs: dict[str, str] | None = None,
    extra_revisions: dict[str, tuple[str | tuple[str, ...], str, str]] | None = None,
    extra_model_columns: str = "",
) -> Path:
    """The shop project under ``root``: revisions a1 -> a2 -> a3 (``bodies`` and ``docs``
    override a revision's code or docstring), plus ``extra_revisions`` as
    ``{id: (down_revision, docstring, body)}``."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text(ALEMBIC_INI)
    (root / "migrations" / "env.py").write_text(env)
    (root / "shop_models.py").write_text(MODELS.format(extra_columns=extra_model_columns))
    (root / "shop_data.py").write_text(DATA_FIXTURES)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [tool.hokmdb.migrations]
            alembic_ini = "alembic.ini"
            metadata = "shop_models:metadata"
            model_modules = ["shop_models"]
            data_fixtures = "shop_data.py"
            """
        )
    )
    chain: dict[str, tuple[str | tuple[str, ...] | None, str, str]] = {
        "a1": (None, DOCS["a1"], A1),
        "a2": ("a1", DOCS["a2"], A2),
        "a3": ("a2", DOCS["a3"], A3.format(extra_upgrade="", downgrade=A3_DOWNGRADE)),
    }
    for rev, body in (bodies or {}).items():
        chain[rev] = (chain[rev][0], chain[rev][1], body)
    for rev, doc in (docs or {}).items():
        chain[rev] = (chain[rev][0], doc, chain[rev][2])
    chain.update(extra_revisions or {})
    for rev, (down, doc, body) in chain.items():
        header = HEADER.format(doc=doc, rev=rev, down=down or "", down_repr=repr(down))
        if not doc:  # no docstring at all: drop the whole docstring block
            header = header.split('"""\n', 2)[2]
        (versions / f"{rev}_shop.py").write_text(header + body)
    return root


def run_suite(pytester: pytest.Pytester, project: Path, report: str = "-rfE") -> pytest.RunResult:
    """The suite against ``project``, in this process (pytester restores sys.modules and
    sys.path afterwards, so each project's models module is imported afresh)."""
    return pytester.runpytest_inprocess(
        "--hokmdb-migrations",
        f"--hokmdb-migrations-project={project}",
        "-k",
        "not test_revision_is_lock_safe",
        "-p",
        "no:cacheprovider",
        report,
        "-q",
    )


def failed_tests(result: pytest.RunResult) -> set[str]:
    """Test names (``file::name[id]``) from the short summary's FAILED/ERROR lines."""
    names = set()
    for line in result.outlines:
        match = re.match(r"(?:FAILED|ERROR) \S*?(test_\w+\.py::.+?)(?: - .*)?$", line)
        if match:
            names.add(match.group(1))
    return names


def failure_text(result: pytest.RunResult, test: str) -> str:
    """The report section of one failed test (between its ``___ name ___`` header and the next)."""
    text = result.stdout.str()
    match = re.search(rf"_{{3,}} {re.escape(test)} _{{3,}}\n(.*?)(?=\n_{{3,}} |\n={{3,}} )", text, re.DOTALL)
    assert match, f"no failure section for {test} in:\n{text}"
    return match.group(1)


def assert_failed(result: pytest.RunResult, expected: set[str]) -> None:
    assert result.ret == 1, result.stdout.str()
    assert failed_tests(result) == expected, result.stdout.str()


# --- the healthy project passes ---------------------------------------------------------------


def test_healthy_project_with_async_env_passes(pytester: pytest.Pytester) -> None:
    result = run_suite(pytester, write_project(pytester.path / "shop"))
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*passed*"])
    assert "test_revision_round_trips" not in result.stdout.str()  # nothing failed or errored


def test_project_real_history_passes(pytester: pytest.Pytester) -> None:
    """The Hokm history itself, through the same front door another project would use."""
    result = run_suite(pytester, REPO)
    assert result.ret == 0, result.stdout.str()


def test_explicitly_merged_history_passes(pytester: pytest.Pytester) -> None:
    """Two branches from a1 merged by an empty merge revision (alembic writes ``pass`` in both
    functions): one head, and every revision, the merge included, round-trips. Sync env.py."""
    project = write_project(
        pytester.path / "shop",
        env=SYNC_ENV,
        extra_revisions={
            "b2": ("a1", "Item notes, on a branch of their own.", NOTES),
            "m4": (("a3", "b2"), "Merge the notes branch.", "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"),
        },
        extra_model_columns='\n    sa.Column("note", sa.Text),',
    )
    result = run_suite(pytester, project)
    assert result.ret == 0, result.stdout.str()
    # The merge is round-tripped too: down to both parents, and up again.
    result.stdout.fnmatch_lines(["*passed*"])


# --- one mistake each -------------------------------------------------------------------------


def test_two_heads_fail(pytester: pytest.Pytester) -> None:
    project = write_project(
        pytester.path / "shop",
        extra_revisions={
            "b2": ("a1", "Item notes, branched off a1 and never merged.", NOTES),
        },
    )
    result = run_suite(pytester, project)
    # Every test that needs "the head" fails with the same explanation; per-revision tests still run.
    assert_failed(
        result,
        {
            "test_history.py::test_history_has_one_head",
            "test_upgrade.py::test_upgrade_from_base_to_head_in_one_go",
            "test_upgrade.py::test_downgrade_from_head_in_one_go",
            "test_drift.py::test_models_match_the_migrations_at_head",
            "test_drift.py::test_check_constraints_match_the_models",
            "test_drift.py::test_enum_labels_match_the_models",
            "test_data.py::test_seeded_data_survives_a_round_trip[seeded items]",
        },
    )
    text = failure_text(result, "test_history_has_one_head")
    assert "the history has 2 heads: revision a3 (a3_shop.py), revision b2 (b2_shop.py)" in text, text
    assert "revision a1 has 2 children (a2, b2)" in text, text
    assert "alembic merge" in text


def test_downgrade_that_forgets_an_index_fails(pytester: pytest.Pytester) -> None:
    body = A3.format(
        extra_upgrade='\n    op.create_index("ix_items_price", "items", ["price"])',
        downgrade=A3_DOWNGRADE,  # drops slug, forgets ix_items_price
    )
    result = run_suite(pytester, write_project(pytester.path / "shop", bodies={"a3": body}))
    assert_failed(
        result,
        {
            # Not the one-go downgrade from head: a1's drop_table takes the index with it.
            "test_roundtrip.py::test_revision_round_trips[a3]",
            "test_drift.py::test_models_match_the_migrations_at_head",  # the models have no such index
            # head -> a2 -> head: the leftover index makes a3's upgrade fail the second time
            "test_data.py::test_seeded_data_survives_a_round_trip[seeded items]",
        },
    )
    seeded = failure_text(result, "test_seeded_data_survives_a_round_trip[seeded items]")
    assert "revision a3 (a3_shop.py): its upgrade() failed" in seeded and "already exists" in seeded, seeded
    text = failure_text(result, "test_revision_round_trips[a3]")
    assert "revision a3 (a3_shop.py): its downgrade (to a2) leaves a trace" in text, text
    assert "+index public.ix_items_price: CREATE INDEX ix_items_price ON public.items USING btree (price)" in text, text
    drift = failure_text(result, "test_models_match_the_migrations_at_head")
    assert "op.drop_index(op.f('ix_items_price'), table_name='items')" in drift, drift


def test_downgrade_that_raises_fails(pytester: pytest.Pytester) -> None:
    body = A3.format(extra_upgrade="", downgrade='    op.drop_column("items", "slug_typo")')
    result = run_suite(pytester, write_project(pytester.path / "shop", bodies={"a3": body}))
    assert_failed(
        result,
        {
            "test_roundtrip.py::test_revision_round_trips[a3]",
            "test_upgrade.py::test_downgrade_from_head_in_one_go",
            "test_data.py::test_revision_keeps_its_data[a3]",
            "test_data.py::test_seeded_data_survives_a_round_trip[seeded items]",
        },
    )
    for test in ("test_revision_round_trips[a3]", "test_downgrade_from_head_in_one_go"):
        text = failure_text(result, test)
        assert "revision a3 (a3_shop.py): its downgrade() failed" in text, text
        assert 'column "slug_typo" of relation "items" does not exist' in text, text


def test_model_column_missing_from_the_migrations_fails(pytester: pytest.Pytester) -> None:
    project = write_project(pytester.path / "shop", extra_model_columns='\n    sa.Column("discount", sa.Integer),')
    result = run_suite(pytester, project)
    assert_failed(result, {"test_drift.py::test_models_match_the_migrations_at_head"})
    text = failure_text(result, "test_models_match_the_migrations_at_head")
    assert "the models and the schema at head (a3) differ; alembic autogenerate would generate:" in text, text
    assert "op.add_column('items', sa.Column('discount', sa.Integer(), nullable=True))" in text, text


def test_data_migration_that_loses_rows_fails(pytester: pytest.Pytester) -> None:
    body = A3.format(
        extra_upgrade="\n    op.execute(\"DELETE FROM items WHERE status = 'draft'\")  # 'tidy up', losing data",
        downgrade=A3_DOWNGRADE,
    )
    result = run_suite(pytester, write_project(pytester.path / "shop", bodies={"a3": body}))
    assert_failed(
        result,
        {"test_data.py::test_revision_keeps_its_data[a3]", "test_data.py::test_seeded_data_survives_a_round_trip[seeded items]"},
    )
    seeded = failure_text(result, "test_seeded_data_survives_a_round_trip[seeded items]")
    assert "seeded items: the seeded data does not survive head (a3) -> a2 -> head" in seeded, seeded
    assert "table public.items: 3 rows before, 1 after; 2 lost or changed (-), 0 new or changed (+)" in seeded, seeded
    assert "  - (1,\"Red Chair\",draft,10.00,red-chair)" in seeded, seeded
    text = failure_text(result, "test_revision_keeps_its_data[a3]")
    assert "revision a3 (a3_shop.py): after the upgrade the data is not what its data fixture expects" in text, text
    assert "table items: 1 row(s), 2 expected; 1 expected row(s) missing (-), 0 unexpected (+)" in text, text
    assert "- {id: 1, name: 'Red Chair', slug: 'red-chair'}" in text, text


def _history_tests(pytester: pytest.Pytester, project: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("--hokmdb-migrations", f"--hokmdb-migrations-project={project}",
                                        "-p", "no:cacheprovider", "-rfEs", "-q", *args)


def test_a_missing_docstring_warns_by_default_and_fails_when_the_project_says_so(pytester: pytest.Pytester) -> None:
    """An opinion (rule revision-docstring) warns; a project that holds itself to it turns it
    into an error, and a revision can waive it with a reason that shows in the report."""
    project = write_project(pytester.path / "shop", docs={"a2": ""})
    warned = _history_tests(pytester, project, "-k", "test_history")
    assert warned.ret == 0, warned.stdout.str()
    warned.stdout.fnmatch_lines(["*MigrationLintWarning: [[]revision-docstring[]] revision a2 (a2_shop.py) has no docstring*"])

    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write('\n[tool.hokmdb.migrations.rules]\nrevision-docstring = "error"\n')
    failed = _history_tests(pytester, project, "-k", "test_history")
    assert_failed(failed, {"test_history.py::test_revision_has_a_docstring[a2]"})
    text = failure_text(failed, "test_revision_has_a_docstring[a2]")
    assert "[revision-docstring] revision a2 (a2_shop.py) has no docstring" in text, text
    assert '[tool.hokmdb.migrations.rules] revision-docstring = "warning" (or "ignored")' in text, text
    assert "waive it in a2_shop.py: hokmdb_lint_waivers = {'revision-docstring': '<why>'}" in text, text

    a2 = next((project / "migrations" / "versions").glob("a2_*.py"))
    a2.write_text(a2.read_text() + '\nhokmdb_lint_waivers = {"revision-docstring": "generated by the vendor tool, documented upstream"}\n')
    waived = _history_tests(pytester, project, "-k", "test_history")
    assert waived.ret == 0, waived.stdout.str()
    waived.stdout.fnmatch_lines(["SKIPPED*[[]revision-docstring[]] waived in a2_shop.py: generated by the vendor tool*"])

    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text().replace(
        'revision-docstring = "error"', 'revision-docstrings = "error"'))
    typo = _history_tests(pytester, project, "-k", "test_history")
    assert typo.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown rule(s) revision-docstrings; the suite's rules are single-head" in typo.stderr.str() + typo.stdout.str()


def test_a_pass_downgrade_is_right_when_the_upgrade_changes_no_schema(pytester: pytest.Pytester) -> None:
    """pytest-alembic's histories have revisions whose upgrade is ``pass`` or only reads data:
    their ``pass`` downgrade undoes everything there is to undo."""
    placeholder = ("a3", "A placeholder kept for the numbering.", "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n")
    reads = ("a4", "Checks that no item has a negative price before the next release.",
             "def upgrade():\n    assert op.get_bind().execute(sa.text('SELECT count(*) FROM items WHERE price < 0')).scalar() == 0\n"
             "\n\ndef downgrade():\n    pass\n")
    project = write_project(pytester.path / "shop", extra_revisions={"a4": placeholder, "a5": reads})
    result = _history_tests(pytester, project, "-k", "real_downgrade")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*5 passed*"])


def test_an_empty_history_is_one_failure_and_can_be_turned_down(pytester: pytest.Pytester) -> None:
    project = write_project(pytester.path / "shop")
    for revision in (project / "migrations" / "versions").glob("*.py"):
        revision.unlink()
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text().replace(
        'data_fixtures = "shop_data.py"\n', ""))  # a new project: no data to keep yet
    result = _history_tests(pytester, project, "-k", "not test_revision_is_lock_safe")
    assert_failed(result, {"test_history.py::test_history_has_one_head"})
    text = failure_text(result, "test_history_has_one_head")
    assert f"[empty-history] the history has no revisions: {project / 'migrations'} holds no revision file" in text, text
    assert "SKIPPED" in result.stdout.str() and "rule empty-history" in result.stdout.str()

    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write('\n[tool.hokmdb.migrations.rules]\nempty-history = "ignored"\n')
    quiet = _history_tests(pytester, project, "-k", "not test_revision_is_lock_safe")
    assert quiet.ret == 0, quiet.stdout.str()


def test_downgrade_that_is_pass_fails(pytester: pytest.Pytester) -> None:
    body = A2.replace(
        '    op.drop_constraint("ck_items_price_nonneg", "items", type_="check")\n    op.drop_column("items", "price")',
        "    pass",
    )
    result = run_suite(pytester, write_project(pytester.path / "shop", bodies={"a2": body}))
    assert_failed(
        result,
        {
            "test_history.py::test_revision_has_a_real_downgrade[a2]",
            # Not the one-go downgrade from head: a1's drop_table takes the price column with it.
            "test_roundtrip.py::test_revision_round_trips[a2]",
        },
    )
    text = failure_text(result, "test_revision_has_a_real_downgrade[a2]")
    assert "revision a2 (a2_shop.py): downgrade() does nothing" in text, text
    trace = failure_text(result, "test_revision_round_trips[a2]")
    assert "revision a2 (a2_shop.py): its downgrade (to a1) leaves a trace" in trace, trace
    assert "+column public.items.price: numeric(10,2) NULL" in trace, trace


def test_irreversible_revision_bounds_the_downgrade_tests(pytester: pytest.Pytester) -> None:
    """The same ``pass`` downgrade, declared irreversible: its downgrade tests are skipped
    with the reason, the one-go downgrade stops at it, and the suite passes."""
    body = A2.replace(
        '    op.drop_constraint("ck_items_price_nonneg", "items", type_="check")\n    op.drop_column("items", "price")',
        "    pass",
    )
    project = write_project(pytester.path / "shop", bodies={"a2": body})
    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write('irreversible = ["a2"]\n')
    result = run_suite(pytester, project, "-rs")
    assert result.ret == 0, result.stdout.str()
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skipped) == 2, result.stdout.str()  # test_revision_has_a_real_downgrade[a2], test_revision_round_trips[a2]
    assert all("revision a2 is listed as irreversible in [tool.hokmdb.migrations]" in line for line in skipped), skipped


def test_upgrade_that_raises_fails_it_and_names_it_for_the_revisions_after(pytester: pytest.Pytester) -> None:
    """The round trips walk one database up the history: a revision whose upgrade fails
    fails its own round trip, and the later revisions' round trips fail at once naming it
    (without walking up to it again)."""
    body = A2.replace('"price >= 0"', '"prise >= 0"')
    result = run_suite(pytester, write_project(pytester.path / "shop", bodies={"a2": body}))
    failed = failed_tests(result)
    assert result.ret == 1, result.stdout.str()
    assert "test_roundtrip.py::test_revision_round_trips[a1]" not in failed, result.stdout.str()
    own = failure_text(result, "test_revision_round_trips[a2]")
    assert "revision a2 (a2_shop.py): its upgrade() failed (upgrade to a2)" in own, own
    assert 'column "prise" does not exist' in own, own
    later = failure_text(result, "test_revision_round_trips[a3]")
    assert "revision a3 (a3_shop.py) cannot be tested: the database cannot be upgraded to a2: " in later, later
    assert "revision a2 (a2_shop.py): its upgrade() failed" in later, later


def test_round_trips_spread_over_workers_pass_and_still_catch_a_trace(pytester: pytest.Pytester) -> None:
    """Under pytest-xdist the second worker's walker climbs past the revisions the first took."""
    body = A2.replace(
        '    op.create_check_constraint("ck_items_price_nonneg", "items", "price >= 0")\n',
        '    op.create_check_constraint("ck_items_price_nonneg", "items", "price >= 0")\n'
        '    op.execute("CREATE SEQUENCE price_list_seq")\n',
    )  # the downgrade forgets the sequence
    notes = ("a3", "Notes on items.", NOTES)
    project = write_project(pytester.path / "shop", bodies={"a2": body}, extra_revisions={"a4": notes})
    result = pytester.runpytest_inprocess(
        "--hokmdb-migrations", "hokmdb-migrations/test_roundtrip.py", f"--hokmdb-migrations-project={project}",
        "-p", "no:cacheprovider",
        "-rfE", "-q", "-n", "2",
    )
    assert_failed(result, {"test_roundtrip.py::test_revision_round_trips[a2]"})
    text = failure_text(result, "test_revision_round_trips[a2]")
    assert "revision a2 (a2_shop.py): its downgrade (to a1) leaves a trace" in text, text
    assert "+sequence public.price_list_seq:" in text, text


def test_a_relative_script_location_is_the_projects_own_not_the_current_directorys(pytester: pytest.Pytester) -> None:
    """alembic resolves a relative ``script_location`` (its templates' default) against the
    current directory. Run from another checkout that has a ``migrations/`` of its own, the
    suite used to read *that* history and pass; it must read the project's, and its header
    must say which script directory and which revisions it read."""
    write_project(pytester.path)  # the decoy: the current directory's own migrations/ (a1..a3)
    project = write_project(pytester.path / "shop", extra_revisions={"a4": ("a3", "Notes on items.", NOTES)})
    (project / "alembic.ini").write_text(ALEMBIC_INI.replace("%(here)s/migrations", "migrations"))

    result = pytester.runpytest_inprocess("--hokmdb-migrations", f"--hokmdb-migrations-project={project}",
                                          "-k", "test_history", "-p", "no:cacheprovider", "-v")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"hokmdb migration suite: project {project}, alembic {project / 'alembic.ini'}, "
                                 f"scripts {project / 'migrations'}, 4 revision(s), a1 .. a4"])
    result.stdout.fnmatch_lines(["*test_revision_has_a_docstring?a4? PASSED*"])

    # Neither under the project root nor beside its ini: said, not guessed.
    (project / "alembic.ini").write_text(ALEMBIC_INI.replace("%(here)s/migrations", "no_such_dir"))
    missing = pytester.runpytest_inprocess("--hokmdb-migrations", f"--hokmdb-migrations-project={project}",
                                           "-k", "test_history", "-p", "no:cacheprovider", "-q")
    assert missing.ret != 0
    missing.stdout.fnmatch_lines([f"*script_location 'no_such_dir' is not a directory under the project root {project}*"])


LEGACY = ("a3", "A note on the legacy settings table the application created before it used alembic.", """\
def upgrade():
    op.add_column("settings", sa.Column("note", sa.Text()), schema="legacy")


def downgrade():
    op.drop_column("settings", "note", schema="legacy")
""")

PREREQUISITES_SQL = """\
CREATE SCHEMA audit;   -- env.py keeps alembic's version table there
CREATE SCHEMA legacy;
CREATE TABLE legacy.settings (key text PRIMARY KEY, value text);
"""

PREREQUISITES_PY = '''\
"""What the shop had before alembic: created with metadata.create_all."""
import sqlalchemy as sa

legacy = sa.MetaData(schema="legacy")
sa.Table("settings", legacy, sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text))


def create(connection):
    connection.exec_driver_sql("CREATE SCHEMA audit")
    connection.exec_driver_sql("CREATE SCHEMA legacy")
    legacy.create_all(connection)
'''


def test_prerequisites_run_before_the_first_revision(pytester: pytest.Pytester) -> None:
    """A history that starts on a database that is not empty (a version table in its own
    schema, tables made by metadata.create_all) runs with only configuration: a SQL file or
    a callable, run on every database the suite starts at base."""
    env = ASYNC_ENV.replace("transaction_per_migration=True", "transaction_per_migration=True, version_table_schema='audit'")
    project = write_project(pytester.path / "shop", env=env, extra_revisions={"a4": LEGACY})
    bare = run_suite(pytester, project)
    assert bare.ret == 1, bare.stdout.str()
    assert 'schema "audit" does not exist' in bare.stdout.str(), bare.stdout.str()

    (project / "prerequisites.sql").write_text(PREREQUISITES_SQL)
    pyproject = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(pyproject.replace("[tool.hokmdb.migrations]\n",
                                                              '[tool.hokmdb.migrations]\nprerequisites = "prerequisites.sql"\n'))
    with_sql = run_suite(pytester, project)
    assert with_sql.ret == 0, with_sql.stdout.str()

    (project / "shop_prereq.py").write_text(PREREQUISITES_PY)
    (project / "pyproject.toml").write_text(pyproject.replace("[tool.hokmdb.migrations]\n",
                                                              '[tool.hokmdb.migrations]\nprerequisites = "shop_prereq:create"\n'))
    with_callable = run_suite(pytester, project)
    assert with_callable.ret == 0, with_callable.stdout.str()
    assert "test_revision_round_trips" not in with_callable.stdout.str()


def test_skip_revisions_and_minimum_downgrade_revision(pytester: pytest.Pytester) -> None:
    """pytest-alembic's two escape hatches: a revision known to be broken and superseded is
    skipped (still applied on the way up), and downgrades are proven only above a floor."""
    broken = A2.replace(
        '    op.drop_constraint("ck_items_price_nonneg", "items", type_="check")\n    op.drop_column("items", "price")',
        '    op.drop_column("items", "price")\n    op.execute("CREATE TABLE leftover (id int)")',
    )  # its downgrade leaves a trace: broken, and superseded by a3
    project = write_project(pytester.path / "shop", bodies={"a2": broken})
    assert_failed(run_suite(pytester, project), {"test_roundtrip.py::test_revision_round_trips[a2]",
                                                 "test_upgrade.py::test_downgrade_from_head_in_one_go"})
    pyproject = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(pyproject.replace(
        "[tool.hokmdb.migrations]\n", '[tool.hokmdb.migrations]\nskip_revisions = ["a2"]\nminimum_downgrade_revision = "a2"\n'))
    result = run_suite(pytester, project, "-rs")
    assert result.ret == 0, result.stdout.str()
    text = result.stdout.str()
    assert "revision a2 is listed in skip_revisions of [tool.hokmdb.migrations]" in text, text
    assert "revision a1 is at or below minimum_downgrade_revision = 'a2' in [tool.hokmdb.migrations]" in text, text

    (project / "pyproject.toml").write_text(pyproject.replace(
        "[tool.hokmdb.migrations]\n", '[tool.hokmdb.migrations]\nskip_revisions = ["a9"]\nminimum_downgrade_revision = "zz"\n'))
    typo = _history_tests(pytester, project, "-k", "irreversible")
    assert_failed(typo, {"test_history.py::test_irreversible_list_names_revisions"})
    text = failure_text(typo, "test_irreversible_list_names_revisions")
    assert "skip_revisions lists 'a9', which is not a revision of the history (a1, a2, a3)" in text, text
    assert "minimum_downgrade_revision is 'zz', which is not a revision" in text, text


FEATURED = ("a3", "Feature the red chair: a data migration that needs its row to exist.", """\
def upgrade():
    chair = op.get_bind().execute(sa.text("SELECT min(id) FROM items WHERE slug = 'red-chair'")).scalar()
    if chair is None:
        raise RuntimeError("there is no red chair to feature")
    op.add_column("items", sa.Column("featured", sa.Boolean, nullable=False, server_default=sa.false()))
    op.execute(sa.text("UPDATE items SET featured = true WHERE id = :id").bindparams(id=chair))


def downgrade():
    op.drop_column("items", "featured")
""")


def test_upgrade_path_data_lets_a_data_migration_that_needs_a_row_be_tested(pytester: pytest.Pytester) -> None:
    """pytest-alembic's before_revision_data: rows inserted at a revision's parent on every
    upgrade through it, so the round trips, the one-command upgrade and the templates can
    run a data migration that fails on empty tables."""
    project = write_project(pytester.path / "shop", extra_revisions={"a4": FEATURED},
                            extra_model_columns='\n    sa.Column("featured", sa.Boolean, nullable=False, server_default=sa.false()),')
    bare = run_suite(pytester, project)
    assert "test_roundtrip.py::test_revision_round_trips[a4]" in failed_tests(bare), bare.stdout.str()
    assert "there is no red chair to feature" in failure_text(bare, "test_revision_round_trips[a4]")

    with (project / "shop_data.py").open("a") as data:
        data.write('\nUPGRADE_PATH_DATA = {"a4": {"items": [{"id": 1, "name": "Red Chair", "status": "draft", '
                   '"slug": "red-chair"}]}}\n')
    result = run_suite(pytester, project)
    assert result.ret == 0, result.stdout.str()

    with (project / "shop_data.py").open("a") as data:
        data.write('\nUPGRADE_PATH_DATA = {"a9": {"items": []}}\n')
    typo = run_suite(pytester, project)
    assert "test_data.py::test_data_fixtures_name_revisions_of_the_history" in failed_tests(typo), typo.stdout.str()
    assert "UPGRADE_PATH_DATA 'a9' is not a revision of the history" in typo.stdout.str()


def test_each_worker_walks_one_contiguous_run_and_the_last_one_takes_the_tests_at_head(pytester: pytest.Pytester) -> None:
    """The walk scheduling (migration_suite/schedule.py): one run of round trips per worker,
    in upgrade order, and the tests that need head on the worker whose run ends there.
    pytest-xdist's own xdist_group marks group nothing on pytest 9.2, so this is the proof
    that the units hold."""
    extra = {"a4": ("a3", "Notes on items.", NOTES)}
    for number in range(5, 9):
        extra[f"a{number}"] = (f"a{number - 1}", f"Reads the catalogue ({number}).",
                               f"def upgrade():\n    op.execute('SELECT {number}')\n\n\n"
                               f"def downgrade():\n    op.execute('SELECT {number}')\n")
    project = write_project(pytester.path / "shop", extra_revisions=extra,
                            extra_model_columns='\n    sa.Column("note", sa.Text),')
    result = pytester.runpytest_inprocess(
        "--hokmdb-migrations", f"--hokmdb-migrations-project={project}", "-k", "not test_revision_is_lock_safe",
        "-p", "no:cacheprovider", "-n", "2", "-v",
    )
    assert result.ret == 0, result.stdout.str()
    ran: dict[str, list[str]] = {}
    for line in result.outlines:
        match = re.match(r"\[(gw\d)\] .*PASSED hokmdb-migrations/(test_\w+\.py::\w+)(?:\[(\w+)\])?", line)
        if match:
            ran.setdefault(match.group(1), []).append(match.group(2) + (f"[{match.group(3)}]" if match.group(3) else ""))
    trips = {worker: [t.split("[")[1][:-1] for t in tests if "test_revision_round_trips" in t] for worker, tests in ran.items()}
    assert sorted(len(v) for v in trips.values()) == [2, 6], trips  # 8 revisions, weights 1 : 0.4
    first, last = sorted(trips, key=lambda worker: trips[worker][0])
    assert trips[first] == ["a1", "a2", "a3", "a4", "a5", "a6"], trips
    assert trips[last] == ["a7", "a8"], trips
    at_head = [t for t in ran[last] if t.startswith(("test_upgrade.py", "test_drift.py"))]
    assert "test_upgrade.py::test_upgrade_from_base_to_head_in_one_go" in at_head, ran
    assert "test_upgrade.py::test_downgrade_from_head_in_one_go" in at_head, ran
    assert not [t for t in ran[first] if t.startswith(("test_upgrade.py", "test_drift.py"))], ran


def test_walk_runs_split_upgrade_order_by_weight() -> None:
    from pytest_hokmdb.migration_suite.schedule import walk_runs

    revisions = [f"r{i:02d}" for i in range(1, 51)]
    runs = walk_runs(revisions, 2)
    assert [len(run) for run in runs] == [36, 14] and runs[0] + runs[1] == revisions
    assert [len(run) for run in walk_runs(revisions, 4)] == [15, 14, 15, 6]  # cumulative bounds, rounded
    assert walk_runs(["a1"], 2) == [["a1"]]  # fewer revisions than workers: fewer runs
    assert walk_runs([], 2) == []

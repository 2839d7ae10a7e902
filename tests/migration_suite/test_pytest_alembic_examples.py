"""hokmdb's migration suite on pytest-alembic's own example histories.

pytest-alembic (github.com/schireson/pytest-alembic, ``examples/`` at commit 9993834,
2026-03-02) proves itself on 38 small alembic projects, and its ``tests/test_runner.py``
records its verdict on each: how many of its tests pass or fail, and with what message.
Each test here writes one of those histories itself (the same revisions, models, env.py
behaviour and data; our own code, not copies of its files), adapted to PostgreSQL where
the example ran on SQLite, configured in ``[tool.hokmdb.migrations]`` the way the example
configures pytest-alembic, and runs the whole suite on it (lint included) with
``pytest --hokmdb-migrations --hokmdb-migrations-project=<dir>``. Where pytest-alembic
finds a defect, hokmdb must fail the corresponding test for the same reason; where it
passes, hokmdb passes, or the test's docstring says why hokmdb's extra failure is right.

The env.py files are written the way pytest-alembic's setup guide asks ("modify the
snippet to resemble ..."): ``connectable = config.attributes.get("connection")`` and then
``with connectable.connect() as connection`` (pytest-alembic hands over its *engine*), or
the async variants of its examples. A project coming from pytest-alembic has exactly this
env.py, so the suite must run it unchanged.

| example (pytest-alembic) | pytest-alembic | hokmdb (asserted here) |
|---|---|---|
| test_no_data, test_experimental_all_models_register(_automatic) | pass | pass |
| test_empty_history | pass | fails rule `empty-history` (right, see the test); passes with it ignored |
| test_alternative_script_location | pass | pass |
| test_default_script_location | pass (its default: migrations) | refuses the ini (alembic cannot run it either); passes given `script_location` |
| test_basic_revision_upgrade_data | pass | pass (UPGRADE_PATH_DATA) |
| test_complex_revision_upgrade_data | pass | fails bbbb: its `pass` downgrade leaves a column (right); lint: SET NOT NULL, DROP DEFAULT |
| test_multiple_schemata | pass (both histories) | pass (the second history, chosen by `alembic_ini`; the first is test_no_data's) |
| test_schema_revision_data | pass (model test excluded) | pass but drift: env.py lacks include_schemas (the test the example excludes, for that reason) |
| test_branched_history | pass (single-head excluded) | pass with `single-head = "ignored"` |
| test_branched_history_with_mergepoint, test_branched_history_before_upgrade_data | pass | fails bbbb: its `pass` downgrade leaves a column (right) |
| test_ambiguous_downgrade_history | pass | pass (docstring warnings) |
| test_process_revision_directives (with test_migrate_up_to's revisions) | model test fails: Exception: foo | drift fails: Exception: foo |
| test_consistency_doesnt_roundtrip | up/down consistency fails | round trip, one-command downgrade and real-downgrade fail |
| test_downgrade_leaves_no_trace_success | pass | pass |
| test_downgrade_leaves_no_trace_failure | no-trace fails (the others excluded) | round trip and one-command downgrade fail; drift too (right) |
| test_minimum_downgrade_revision | pass | pass; lint: unbatched DELETE in bbbb |
| test_unimplemented_downgrade_warning | pass, 2 warnings | fails until bbbb is declared irreversible (right), then passes; lint as above |
| test_failing_downgrade | up/down and no-trace fail: Something went wrong | round trip and one-command downgrade fail: Something went wrong; lint as above |
| test_skip_revision | pass (bbbb stamped, never run) | fails: bbbb's upgrade cannot run, no database reaches head (right) |
| test_version_table_schema | pass | pass (`prerequisites` creates the schema) |
| test_async_sqlalchemy, test_async_sqlalchemy_native, test_experimental_all_models_register_async | pass | pass |
| test_experimental_all_models_register_offline | pass | pass |
| test_experimental_all_models_register_namespace_package | pass | pass |
| test_experimental_all_models_register_failure | fails: models.bar not registered | fails: model module models.bar not imported |
| test_experimental_all_models_register_no_metadata | fails: no MetaData | drift tests fail: metadata is not set |
| test_experimental_all_models_register_metadata | pass (only its register test runs) | pass but drift: the empty MetaData lacks foo (right) |

The lint (``test_revision_is_lock_safe``) has no pytest-alembic counterpart; where it fails
a revision of an example, the test asserts that too and says why.

Examples not run here, each with its reason, are in ``SKIPPED`` (reported as skipped
tests, so none is left out silently); ``test_every_example_is_accounted_for`` checks that
every one of the 38 is either run or skipped.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from test_broken_histories import assert_failed, failed_tests, failure_text

# The 38 directories of pytest-alembic's examples/ (commit 9993834).
PYTEST_ALEMBIC_EXAMPLES = (
    "test_alternative_script_location", "test_ambiguous_downgrade_history", "test_async_sqlalchemy",
    "test_async_sqlalchemy_native", "test_basic_revision_upgrade_data", "test_branched_history",
    "test_branched_history_before_upgrade_data", "test_branched_history_with_mergepoint",
    "test_complex_revision_upgrade_data", "test_consistency_doesnt_roundtrip", "test_default_env_script",
    "test_default_script_location", "test_downgrade_leaves_no_trace_failure",
    "test_downgrade_leaves_no_trace_success", "test_empty_history", "test_experimental_all_models_register",
    "test_experimental_all_models_register_async", "test_experimental_all_models_register_automatic",
    "test_experimental_all_models_register_failure", "test_experimental_all_models_register_metadata",
    "test_experimental_all_models_register_namespace_package", "test_experimental_all_models_register_no_metadata",
    "test_experimental_all_models_register_offline", "test_failing_downgrade", "test_generate_revision",
    "test_manual_alembic_config", "test_migrate_down_before", "test_migrate_up_before", "test_migrate_up_to",
    "test_minimum_downgrade_revision", "test_multiple_schemata", "test_no_data", "test_process_revision_directives",
    "test_pytest_alembic_tests_path", "test_schema_revision_data", "test_skip_revision",
    "test_unimplemented_downgrade_warning", "test_version_table_schema",
)

SKIPPED = {
    "test_default_env_script": "no verdict to compare with: pytest-alembic's test_runner.py never runs it (it has no "
                               "env.py at all, and its revision uses SQLAlchemy 1.x's conn.execute('SELECT ...'))",
    "test_generate_revision": "about pytest-alembic's runner.generate_revision() API (its test matches SQLite's 'no "
                              "such table'); the history is empty, as test_empty_history's",
    "test_manual_alembic_config": "about pytest-alembic's alembic_config fixture (a Config built by hand); the history "
                                  "is test_alternative_script_location's, and hokmdb's counterpart (script_location in "
                                  "[tool.hokmdb.migrations]) is run for test_default_script_location",
    "test_migrate_down_before": "about pytest-alembic's runner.migrate_down_before() API; the history is test_no_data's",
    "test_migrate_up_before": "about pytest-alembic's runner.migrate_up_before()/insert_into()/table_at_revision() API; "
                              "the history is test_no_data's",
    "test_pytest_alembic_tests_path": "about pytest-alembic's pytest_alembic_tests_path ini option (where its fixtures "
                                      "live); the history is test_alternative_script_location's",
}

# Which test here runs which example's history.
COVERED = {
    "test_no_data": "test_no_data",
    "test_experimental_all_models_register": "test_no_data",
    "test_experimental_all_models_register_automatic": "test_no_data",
    "test_empty_history": "test_empty_history",
    "test_alternative_script_location": "test_alternative_script_location",
    "test_default_script_location": "test_default_script_location",
    "test_basic_revision_upgrade_data": "test_basic_revision_upgrade_data",
    "test_complex_revision_upgrade_data": "test_complex_revision_upgrade_data",
    "test_multiple_schemata": "test_multiple_schemata",
    "test_schema_revision_data": "test_schema_revision_data",
    "test_branched_history": "test_branched_history",
    "test_branched_history_with_mergepoint": "test_branched_history_with_mergepoint_and_upgrade_data",
    "test_branched_history_before_upgrade_data": "test_branched_history_with_mergepoint_and_upgrade_data",
    "test_ambiguous_downgrade_history": "test_ambiguous_downgrade_history",
    "test_process_revision_directives": "test_process_revision_directives",
    "test_migrate_up_to": "test_process_revision_directives",
    "test_consistency_doesnt_roundtrip": "test_consistency_doesnt_roundtrip",
    "test_downgrade_leaves_no_trace_success": "test_downgrade_leaves_no_trace_success",
    "test_downgrade_leaves_no_trace_failure": "test_downgrade_leaves_no_trace_failure",
    "test_minimum_downgrade_revision": "test_minimum_downgrade_revision",
    "test_unimplemented_downgrade_warning": "test_unimplemented_downgrade_warning",
    "test_failing_downgrade": "test_failing_downgrade",
    "test_skip_revision": "test_skip_revision",
    "test_version_table_schema": "test_version_table_schema",
    "test_async_sqlalchemy": "test_async_sqlalchemy",
    "test_async_sqlalchemy_native": "test_async_sqlalchemy_native",
    "test_experimental_all_models_register_async": "test_experimental_all_models_register_async",
    "test_experimental_all_models_register_offline": "test_experimental_all_models_register_offline",
    "test_experimental_all_models_register_namespace_package": "test_experimental_all_models_register_namespace_package",
    "test_experimental_all_models_register_failure": "test_experimental_all_models_register_failure",
    "test_experimental_all_models_register_no_metadata": "test_experimental_all_models_register_no_metadata",
    "test_experimental_all_models_register_metadata": "test_experimental_all_models_register_metadata",
}


# --- the projects' files, in our words ----------------------------------------------------------

# pytest-alembic's examples keep alembic's logging sections and call fileConfig unguarded.
def ini(script_location: str | None = "migrations") -> str:
    location = f"script_location = {script_location}\n" if script_location else ""
    return f"""\
[alembic]
{location}
[loggers]
keys = root

[handlers]
keys = stderr

[formatters]
keys = plain

[logger_root]
level = WARN
handlers = stderr

[handler_stderr]
class = StreamHandler
args = (sys.stderr,)
formatter = plain

[formatter_plain]
format = %%(levelname)s %%(name)s %%(message)s
"""


def sync_env(*, models: str = "from models import Base", metadata: str | None = "Base.metadata",
             configure: str = "", file_config: bool = True, prelude: str = "") -> str:
    """pytest-alembic's env.py: its engine, or one from the ini; then ``engine.connect()``."""
    target = f", target_metadata={metadata}" if metadata else ""
    return f'''\
"""Migrations run online, on the engine the test runner hands over (pytest-alembic's setup)."""
{prelude}from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

{models}

config = context.config
{"fileConfig(config.config_file_name)" if file_config else ""}

connectable = config.attributes.get("connection", None)
if connectable is None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section), prefix="sqlalchemy.", poolclass=pool.NullPool
    )

with connectable.connect() as connection:
    context.configure(connection=connection{target}{configure})
    with context.begin_transaction():
        context.run_migrations()
'''


ASYNC_PREAMBLE = '''\
import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlalchemy.ext.asyncio.engine import AsyncEngine

from models import Base

config = context.config
fileConfig(config.config_file_name)


def migrate(connection):
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


def handed_over_or_own():
    engine = config.attributes.get("connection", None)
    if engine is None:
        engine = AsyncEngine(engine_from_config(
            config.get_section(config.config_ini_section), prefix="sqlalchemy.", poolclass=pool.NullPool, future=True
        ))
    return engine


async def migrate_async(engine):
    async with engine.connect() as connection:
        await connection.run_sync(migrate)
    await engine.dispose()

'''

# test_async_sqlalchemy: asyncio.run at module level, whatever it is handed must be an AsyncEngine.
ASYNC_ENV = '"""Async migrations on the AsyncEngine the runner hands over."""\n' + ASYNC_PREAMBLE + """
asyncio.run(migrate_async(handed_over_or_own()))
"""

# test_async_sqlalchemy_native: an AsyncEngine is driven with asyncio.run, a sync engine with connect().
ASYNC_NATIVE_ENV = '"""Async or sync, as the runner\'s engine is."""\n' + ASYNC_PREAMBLE + """
engine = handed_over_or_own()
if isinstance(engine, AsyncEngine):
    asyncio.run(migrate_async(engine))
else:
    with engine.connect() as connection:
        migrate(connection)
"""

# test_experimental_all_models_register_async: anything but an AsyncEngine is used as the connection.
ASYNC_OR_CONNECTION_ENV = '"""An AsyncEngine, or a connection used as it is."""\n' + ASYNC_PREAMBLE + """
engine = handed_over_or_own()
if isinstance(engine, AsyncEngine):
    asyncio.run(migrate_async(engine))
else:
    migrate(engine)
"""

OFFLINE_ENV = '''\
"""Online on the runner's engine; offline (--sql) from the ini's URL."""
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

from models import Base

config = context.config
fileConfig(config.config_file_name)
connectable = config.attributes.get("connection", None)


def online():
    global connectable
    if connectable is None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section), prefix="sqlalchemy.", poolclass=pool.NullPool
        )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()


def offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    offline()
else:
    online()
'''


def revision(rev: str, down: str | tuple[str, ...] | None, upgrade: str, downgrade: str = "pass", *,
             doc: str | None = None, imports: str = "import sqlalchemy as sa\nfrom alembic import op\n") -> str:
    """A revision file; ``upgrade``/``downgrade`` are function bodies (unindented)."""
    head = f'"""{doc}"""\n' if doc is not None else ""
    return (
        f"{head}{imports}\n"
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n{textwrap.indent(upgrade, '    ')}\n\n\n"
        f"def downgrade():\n{textwrap.indent(downgrade, '    ')}\n"
    )


# Revision bodies shared by several examples.
CREATE_FOO_STAMPED = """\
op.create_table(
    "foo",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"),
              nullable=False),
    sa.PrimaryKeyConstraint("id"),
)"""
CREATE_FOO = """\
op.create_table("foo", sa.Column("id", sa.Integer(), autoincrement=True, nullable=False), sa.PrimaryKeyConstraint("id"))"""
DROP_FOO = 'op.drop_table("foo")'
FOO_IS_EMPTY = """\
rows = op.get_bind().execute(sa.text("SELECT * FROM foo")).fetchall()
assert len(rows) == 0"""
FOO_HOLDS_ROW_9 = """\
rows = op.get_bind().execute(sa.text("SELECT * FROM foo")).fetchall()
assert len(rows) == 1, rows
assert rows[0].id == 9, rows"""
EMPTY_FOO = 'op.get_bind()\nop.execute("DELETE FROM foo")'
ADD_FOO_ID = 'op.add_column("foo", sa.Column("foo_id", sa.Integer(), server_default="9"))'
DROP_FOO_ID = 'op.drop_column("foo", "foo_id")'
ADD_CREATED_AT = """\
op.add_column("foo", sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("'2020-01-01'"),
                               nullable=False))"""
CREATE_BAR = """\
op.create_table("bar", sa.Column("id", sa.Integer(), autoincrement=True, nullable=False), sa.PrimaryKeyConstraint("id"))"""

MODELS_HEADER = """\
import sqlalchemy
from sqlalchemy import Column, types
from sqlalchemy.orm import declarative_base

Base = declarative_base()
"""
FOO_STAMPED_MODEL = """

class CreatedAt(Base):
    __tablename__ = "foo"
    id = Column(types.Integer(), autoincrement=True, primary_key=True)
    created_at = sqlalchemy.Column(sqlalchemy.types.DateTime(timezone=True),
                                   server_default=sqlalchemy.text("CURRENT_TIMESTAMP"), nullable=False)
"""
FOO_MODEL = """

class Foo(Base):
    __tablename__ = "foo"
    id = Column(types.Integer(), autoincrement=True, primary_key=True)
"""
BAR_MODEL = """

class Bar(Base):
    __tablename__ = "bar"
    id = Column(types.Integer(), autoincrement=True, primary_key=True)
"""


def pyproject(**settings: object) -> str:
    """``[tool.hokmdb.migrations]`` from keyword settings (``rules`` is a table of its own)."""
    rules = settings.pop("rules", None)

    def toml(value: object) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list | tuple):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return f'"{value}"'

    text = "[tool.hokmdb.migrations]\n" + "".join(f"{key} = {toml(value)}\n" for key, value in settings.items())
    if rules:
        text += "\n[tool.hokmdb.migrations.rules]\n" + "".join(f'{k} = "{v}"\n' for k, v in dict(rules).items())
    return text


def upgrade_path_data(rows: dict[str, dict[str, list[dict[str, object]]]]) -> str:
    """pytest-alembic's before_revision_data, as hokmdb's UPGRADE_PATH_DATA."""
    return f'"""Rows the revisions need before they run."""\n\nUPGRADE_PATH_DATA = {rows!r}\n'


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def no_data_history(location: str = "migrations", *, second: str = FOO_IS_EMPTY) -> dict[str, str]:
    """test_no_data's two revisions: foo with a created_at default, then one that only reads foo."""
    return {
        f"{location}/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO_STAMPED, DROP_FOO),
        f"{location}/versions/bbbbbbbbbbbb_update_foo.py": revision("bbbbbbbbbbbb", "aaaaaaaaaaaa", second),
    }


def run_example(pytester: pytest.Pytester, project: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(
        "--hokmdb-migrations", f"--hokmdb-migrations-project={project}",
        "-p", "no:cacheprovider", "-p", "no:randomly", "-rfEs", "-q", *args,
    )


def assert_passed(result: pytest.RunResult) -> None:
    assert result.ret == 0, result.stdout.str()
    assert not failed_tests(result), result.stdout.str()


# --- bookkeeping ----------------------------------------------------------------------------------


def test_every_example_is_accounted_for() -> None:
    assert len(PYTEST_ALEMBIC_EXAMPLES) == 38
    assert set(COVERED) | set(SKIPPED) == set(PYTEST_ALEMBIC_EXAMPLES)
    assert not set(COVERED) & set(SKIPPED)
    tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    assert set(COVERED.values()) <= tests, set(COVERED.values()) - tests


@pytest.mark.parametrize("example", sorted(SKIPPED))
def test_example_not_run(example: str) -> None:
    pytest.skip(f"pytest-alembic's {example}: {SKIPPED[example]}")


# --- the examples ---------------------------------------------------------------------------------


def test_no_data(pytester: pytest.Pytester) -> None:
    """test_no_data, test_experimental_all_models_register and ..._automatic (the same files,
    the last two also run pytest-alembic's all_models_register_on_metadata on ``models``).
    pytest-alembic: all pass. hokmdb: all pass (``model_modules = ["models"]`` is the
    register test); the revisions have no docstrings, a warning by default."""
    project = write(pytester.path / "no_data", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "migrations/__init__.py": "",
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata", model_modules=["models"]),
        **no_data_history(),
    })
    result = run_example(pytester, project)
    assert_passed(result)
    result.stdout.fnmatch_lines(["*MigrationLintWarning: [[]revision-docstring[]] revision aaaaaaaaaaaa*"])


def test_empty_history(pytester: pytest.Pytester) -> None:
    """test_empty_history: no revision at all. pytest-alembic passes (single_head excluded;
    upgrade, up/down, no-trace and all-models-register pass on nothing).

    hokmdb fails ``test_history_has_one_head`` (rule ``empty-history``) and skips the rest:
    right, because a script directory without revisions is what a wrong ``script_location``
    looks like, and a suite that passes on nothing proves nothing. A project that really is
    new says so with ``empty-history = "ignored"`` and then passes."""
    project = write(pytester.path / "empty", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "migrations/versions/.gitkeep": "",
        "models.py": MODELS_HEADER,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
    })
    result = run_example(pytester, project)
    assert_failed(result, {"test_history.py::test_history_has_one_head"})
    text = failure_text(result, "test_history_has_one_head")
    assert "[empty-history] the history has no revisions" in text, text

    (project / "pyproject.toml").write_text(pyproject(metadata="models:Base.metadata", rules={"empty-history": "ignored"}))
    assert_passed(run_example(pytester, project))


def test_alternative_script_location(pytester: pytest.Pytester) -> None:
    """test_alternative_script_location: test_no_data's history in a script directory named
    ``alembic`` (the ini says so). pytest-alembic: pass. hokmdb: pass, reading that directory."""
    project = write(pytester.path / "alternative", {
        "alembic.ini": ini("alembic"),
        "alembic/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
        **no_data_history("alembic"),
    })
    result = run_example(pytester, project, "-v")  # -q -v: the header, which names the script directory read
    assert_passed(result)
    result.stdout.fnmatch_lines([f"*scripts {project / 'alembic'}, 2 revision(s), aaaaaaaaaaaa .. bbbbbbbbbbbb"])


def test_default_script_location(pytester: pytest.Pytester) -> None:
    """test_default_script_location: an ini whose ``[alembic]`` has no ``script_location``.
    pytest-alembic passes: its Config defaults to ``migrations``.

    hokmdb refuses the ini, saying it has no script_location: right, since alembic itself
    cannot run this project (``alembic upgrade head``: "No 'script_location' key found in
    configuration"); hokmdb does not guess. Given ``script_location = "migrations"`` in
    ``[tool.hokmdb.migrations]`` (the counterpart of pytest-alembic's default, and of
    test_manual_alembic_config's hand-built Config), it passes."""
    project = write(pytester.path / "default_location", {
        "alembic.ini": ini(None),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
        **no_data_history(),
    })
    refused = run_example(pytester, project)
    assert refused.ret != 0, refused.stdout.str()
    assert f"{project / 'alembic.ini'} has no script_location" in refused.stdout.str(), refused.stdout.str()

    (project / "pyproject.toml").write_text(pyproject(metadata="models:Base.metadata", script_location="migrations"))
    assert_passed(run_example(pytester, project))


def test_basic_revision_upgrade_data(pytester: pytest.Pytester) -> None:
    """test_basic_revision_upgrade_data: revision bbbb asserts that foo holds exactly the row
    id 9, which pytest-alembic's before_revision_data inserts before bbbb. pytest-alembic:
    pass. hokmdb: pass, the row given as UPGRADE_PATH_DATA (inserted once however often a
    round trip passes bbbb)."""
    project = write(pytester.path / "basic_data", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pa_data.py": upgrade_path_data({"bbbbbbbbbbbb": {"foo": [{"id": 9}]}}),
        "pyproject.toml": pyproject(metadata="models:Base.metadata", data_fixtures="pa_data.py"),
        **no_data_history(second=FOO_HOLDS_ROW_9),
    })
    assert_passed(run_example(pytester, project))


def test_complex_revision_upgrade_data(pytester: pytest.Pytester) -> None:
    """test_complex_revision_upgrade_data: aaaa creates foo and a bar without a primary key;
    bbbb adds bar.foo_id (filled with 9, then NOT NULL) with a ``pass`` downgrade; cccc
    asserts the rows inserted before bbbb and before cccc. pytest-alembic: pass (its up/down
    test only checks that each downgrade runs).

    hokmdb fails bbbb's real-downgrade and round-trip tests: right, bbbb's downgrade leaves
    bar.foo_id behind, so after ``alembic downgrade aaaa`` the next ``upgrade`` fails
    (column "foo_id" already exists). Everything else passes: cccc's rows are inserted
    once, even in a round trip that passes cccc twice, although bar has no key to tell an
    existing row by.

    The lint fails bbbb as well, which pytest-alembic has no counterpart for: right by
    hokmdb's lock-safety policy, since ``SET NOT NULL`` scans bar under an ACCESS EXCLUSIVE
    lock and dropping the default breaks clients that insert without foo_id."""
    complex_models = MODELS_HEADER + FOO_STAMPED_MODEL.replace("CreatedAt", "Foo") + """

class Bar(Base):
    __tablename__ = "bar"
    id = Column(types.Integer(), autoincrement=True, primary_key=True)
    foo_id = Column(types.Integer(), nullable=False)
"""
    create_both = CREATE_FOO_STAMPED + """
op.create_table("bar", sa.Column("id", sa.Integer(), autoincrement=True, nullable=False))"""
    check_rows = """\
bind = op.get_bind()
foo = bind.execute(sa.text("SELECT * FROM foo ORDER BY id")).fetchall()
assert [row.id for row in foo] == [9, 10], foo
bar = bind.execute(sa.text("SELECT * FROM bar ORDER BY id")).fetchall()
assert [(row.id, row.foo_id) for row in bar] == [(1, 9), (2, 10)], bar"""
    project = write(pytester.path / "complex_data", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": complex_models,
        "pa_data.py": upgrade_path_data({
            "bbbbbbbbbbbb": {"foo": [{"id": 9}, {"id": 10}], "bar": [{"id": 1}]},
            "cccccccccccc": {"bar": [{"id": 2, "foo_id": 10}]},
        }),
        "pyproject.toml": pyproject(metadata="models:Base.metadata", data_fixtures="pa_data.py"),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision(
            "aaaaaaaaaaaa", None, create_both, 'op.drop_table("bar")\nop.drop_table("foo")'),
        "migrations/versions/bbbbbbbbbbbb_update_foo.py": revision(
            "bbbbbbbbbbbb", "aaaaaaaaaaaa",
            'op.add_column("bar", sa.Column("foo_id", sa.Integer(), server_default="9"))\n'
            'op.alter_column("bar", "foo_id", server_default=None, nullable=False)'),
        "migrations/versions/cccccccccccc_update_foo.py": revision("cccccccccccc", "bbbbbbbbbbbb", check_rows),
    })
    result = run_example(pytester, project)
    assert_failed(result, {
        "test_history.py::test_revision_has_a_real_downgrade[bbbbbbbbbbbb]",
        "test_roundtrip.py::test_revision_round_trips[bbbbbbbbbbbb]",
        "test_lint.py::test_revision_is_lock_safe[bbbbbbbbbbbb]",
    })
    text = failure_text(result, "test_revision_round_trips[bbbbbbbbbbbb]")
    assert "its downgrade (to aaaaaaaaaaaa) leaves a trace" in text, text
    assert "+column public.bar.foo_id: integer NOT NULL" in text, text
    lint = failure_text(result, "test_revision_is_lock_safe[bbbbbbbbbbbb]")
    assert "[adding-not-nullable-field]" in lint and "ALTER TABLE bar ALTER COLUMN foo_id SET NOT NULL" in lint, lint
    assert "[ban-drop-default]" in lint, lint


def test_multiple_schemata(pytester: pytest.Pytester) -> None:
    """test_multiple_schemata: two histories in one project (alembic.ini -> migrations,
    alembic2.ini -> migrations2, each test_no_data's revisions, models / models2), which
    pytest-alembic tests with one fixture per ini: all 8 pass. hokmdb verifies one history
    per run, chosen by ``alembic_ini``; the first is test_no_data's above, the second passes
    here and is the one read."""
    files = {
        "alembic.ini": ini(),
        "alembic2.ini": ini("migrations2"),
        "migrations/env.py": sync_env(),
        "migrations2/env.py": sync_env(models="from models2 import Base"),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "models2.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(alembic_ini="alembic2.ini", metadata="models2:Base.metadata", model_modules=["models2"]),
        **no_data_history(),
        **no_data_history("migrations2"),
    }
    project = write(pytester.path / "two_histories", files)
    result = run_example(pytester, project, "-v")  # -q -v: the header, which names the ini and scripts read
    assert_passed(result)
    result.stdout.fnmatch_lines([f"*alembic {project / 'alembic2.ini'}, scripts {project / 'migrations2'}, *"])


def test_schema_revision_data(pytester: pytest.Pytester) -> None:
    """test_schema_revision_data: aaaa creates schema meow and meow.foo; bbbb asserts the row
    inserted into ``meow.foo`` before it. pytest-alembic: 3 pass, with its model test
    excluded by the example's configuration (pytest_alembic_exclude).

    hokmdb passes everything but ``test_models_match_the_migrations_at_head``, which is the
    test the example excludes, failing for the reason it is excluded: env.py does not pass
    ``include_schemas=True``, so autogenerate (and ``alembic check``) sees no meow.foo in the
    database and would create it. Right: that is what ``alembic check`` reports."""
    project = write(pytester.path / "schema_data", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_MODEL.replace('"foo"\n', '"foo"\n    __table_args__ = {"schema": "meow"}\n'),
        "pa_data.py": upgrade_path_data({"bbbbbbbbbbbb": {"meow.foo": [{"id": 9}]}}),
        "pyproject.toml": pyproject(metadata="models:Base.metadata", data_fixtures="pa_data.py"),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision(
            "aaaaaaaaaaaa", None,
            'op.execute(sa.text("CREATE SCHEMA meow"))\n'
            'op.create_table("foo", sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),\n'
            '                sa.PrimaryKeyConstraint("id"), schema="meow")',
            'op.drop_table("foo", schema="meow")\nop.execute("DROP SCHEMA meow")'),
        "migrations/versions/bbbbbbbbbbbb_update_foo.py": revision(
            "bbbbbbbbbbbb", "aaaaaaaaaaaa", FOO_HOLDS_ROW_9.replace("FROM foo", "FROM meow.foo")),
    })
    result = run_example(pytester, project)
    assert_failed(result, {"test_drift.py::test_models_match_the_migrations_at_head"})
    text = failure_text(result, "test_models_match_the_migrations_at_head")
    assert "op.create_table('foo'" in text and "schema='meow'" in text, text


def test_branched_history(pytester: pytest.Pytester) -> None:
    """test_branched_history: aaaa, then two unmerged heads, bbbb (foo.created_at) and cccc
    (table bar). pytest-alembic: pass, with single_head_revision excluded by the example's
    configuration; it upgrades to ``heads``.

    hokmdb's counterpart of that exclusion is ``single-head = "ignored"``; with it the
    history's two heads are the state to build, compare with the models and downgrade from,
    and the suite passes. (With the rule at its default, error, the history fails: see
    test_broken_histories.py's test_two_heads_fail.)"""
    project = write(pytester.path / "branched", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL.replace('"CURRENT_TIMESTAMP"', '"\'2020-01-01\'"') + BAR_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata", rules={"single-head": "ignored"}),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO, DROP_FOO),
        "migrations/versions/bbbbbbbbbbbb_update_foo.py": revision(
            "bbbbbbbbbbbb", "aaaaaaaaaaaa", ADD_CREATED_AT, 'op.drop_column("foo", "created_at")'),
        "migrations/versions/cccccccccccc_create_bar.py": revision(
            "cccccccccccc", "aaaaaaaaaaaa", CREATE_BAR, 'op.drop_table("bar")'),
    })
    assert_passed(run_example(pytester, project))


def test_branched_history_with_mergepoint_and_upgrade_data(pytester: pytest.Pytester) -> None:
    """test_branched_history_with_mergepoint and test_branched_history_before_upgrade_data
    (the same revisions; the second inserts foo id 1 before bbbb and has no fileConfig):
    aaaa, branches bbbb (foo.created_at, ``pass`` downgrade) and cccc (bar), merged by
    70da13da0332. pytest-alembic: pass.

    hokmdb fails bbbb's real-downgrade and round-trip tests: right, bbbb's downgrade leaves
    foo.created_at behind (pytest-alembic only checks that the downgrade runs). The merge,
    the branches' round trips, the data inserted once and the one-command tests pass."""
    project = write(pytester.path / "mergepoint", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(file_config=False),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL.replace('"CURRENT_TIMESTAMP"', '"\'2020-01-01\'"') + BAR_MODEL,
        "pa_data.py": upgrade_path_data({"bbbbbbbbbbbb": {"foo": [{"id": 1}]}}),
        "pyproject.toml": pyproject(metadata="models:Base.metadata", data_fixtures="pa_data.py"),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO, DROP_FOO),
        "migrations/versions/bbbbbbbbbbbb_update_foo.py": revision("bbbbbbbbbbbb", "aaaaaaaaaaaa", ADD_CREATED_AT),
        "migrations/versions/cccccccccccc_create_bar.py": revision(
            "cccccccccccc", "aaaaaaaaaaaa", CREATE_BAR, 'op.drop_table("bar")'),
        "migrations/versions/70da13da0332_.py": revision(
            "70da13da0332", ("bbbbbbbbbbbb", "cccccccccccc"), "pass", doc="empty message.", imports=""),
    })
    result = run_example(pytester, project)
    assert_failed(result, {
        "test_history.py::test_revision_has_a_real_downgrade[bbbbbbbbbbbb]",
        "test_roundtrip.py::test_revision_round_trips[bbbbbbbbbbbb]",
    })
    text = failure_text(result, "test_revision_round_trips[bbbbbbbbbbbb]")
    assert "its downgrade (to aaaaaaaaaaaa) leaves a trace" in text, text
    assert "+column public.foo.created_at: timestamp with time zone NOT NULL" in text, text


def test_ambiguous_downgrade_history(pytester: pytest.Pytester) -> None:
    """test_ambiguous_downgrade_history: ten no-op revisions whose merges share ancestors (a
    merge of a revision and a descendant of its sibling), with alembic's boilerplate as
    their docstrings. pytest-alembic: pass. hokmdb: pass (the docstrings are warnings); each
    merge is round-tripped down to one parent and up again."""
    graph = {
        "first": None,
        "10483a8dd3c8": "first",
        "68bf6c25ca140073cfa0": "first",
        "effc355fddff": "first",
        "7f5b06f81aef": "effc355fddff",
        "79ee02b5e895": ("10483a8dd3c8", "effc355fddff"),
        "845c0ab60c02": ("7f5b06f81aef", "68bf6c25ca140073cfa0"),
        "b55e304ba00c": ("7f5b06f81aef", "79ee02b5e895"),
        "bd7be2a11e1c": "845c0ab60c02",
        "25521e40a00f": ("b55e304ba00c", "bd7be2a11e1c"),
    }
    files = {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
    }
    for rev, down in graph.items():
        revises = ", ".join([down] if isinstance(down, str) else down or [])
        doc = f"Revision ID: {rev}\nRevises: {revises}\nCreate Date: 2020-07-01 16:44:05.244310.\n"
        files[f"migrations/versions/{'base' if rev == 'first' else rev}.py"] = revision(rev, down, "pass", doc=doc,
                                                                                       imports="")
    project = write(pytester.path / "ambiguous", files)
    result = run_example(pytester, project)
    assert_passed(result)
    result.stdout.fnmatch_lines(["*[[]revision-docstring[]] revision 25521e40a00f*only alembic's boilerplate*"])


def test_process_revision_directives(pytester: pytest.Pytester) -> None:
    """test_process_revision_directives, with test_migrate_up_to's revisions (bbbb's upgrade
    does nothing, its downgrade deletes foo's rows): the project's process_revision_directives
    hook raises ``Exception("foo")``. pytest-alembic: its model test fails with "Exception:
    foo" (it autogenerates a revision through the hook), the other three pass.

    hokmdb's counterpart of pytest-alembic's process_revision_directives option is env.py's
    own ``context.configure(process_revision_directives=...)``, which ``alembic check`` calls
    (alembic.command.check -> RevisionContext._run_environment). The drift test runs
    autogenerate "as alembic check does", so it must fail the same way; the rest passes."""
    hook = "\n\ndef refuse(context, revision, directives):\n    raise Exception(\"foo\")\n"
    project = write(pytester.path / "directives", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(models="from models import Base" + hook,
                                      configure=", process_revision_directives=refuse"),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO_STAMPED, DROP_FOO),
        "migrations/versions/bbbbbbbbbbbb_update_foo.py": revision(
            "bbbbbbbbbbbb", "aaaaaaaaaaaa", "pass", 'op.get_bind().execute(sa.text("DELETE FROM foo"))'),
    })
    result = run_example(pytester, project)
    assert_failed(result, {"test_drift.py::test_models_match_the_migrations_at_head"})
    text = failure_text(result, "test_models_match_the_migrations_at_head")
    assert "Exception: foo" in text, text


def test_consistency_doesnt_roundtrip(pytester: pytest.Pytester) -> None:
    """test_consistency_doesnt_roundtrip: aaaa creates foo and its downgrade is ``pass``.
    pytest-alembic: up/down consistency fails ("after performing a roundtrip"), 3 pass.
    hokmdb fails for the same reason in each test that proves a downgrade: the revision's
    real-downgrade rule, its round trip and the one-command downgrade (table foo is left)."""
    project = write(pytester.path / "no_roundtrip", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO),
    })
    result = run_example(pytester, project)
    assert_failed(result, {
        "test_history.py::test_revision_has_a_real_downgrade[aaaaaaaaaaaa]",
        "test_roundtrip.py::test_revision_round_trips[aaaaaaaaaaaa]",
        "test_upgrade.py::test_downgrade_from_head_in_one_go",
    })
    assert "downgrade() does nothing" in failure_text(result, "test_revision_has_a_real_downgrade[aaaaaaaaaaaa]")
    text = failure_text(result, "test_revision_round_trips[aaaaaaaaaaaa]")
    assert "its downgrade (to base) leaves a trace" in text and "+relation public.foo: kind=r" in text, text
    assert "+relation public.foo: kind=r" in failure_text(result, "test_downgrade_from_head_in_one_go")


def test_downgrade_leaves_no_trace_success(pytester: pytest.Pytester) -> None:
    """test_downgrade_leaves_no_trace_success: one revision that creates and drops foo.
    pytest-alembic: pass (its experimental no-trace test included). hokmdb: pass."""
    project = write(pytester.path / "no_trace", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata", model_modules=["models"]),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO, DROP_FOO),
    })
    assert_passed(run_example(pytester, project))


def test_downgrade_leaves_no_trace_failure(pytester: pytest.Pytester) -> None:
    """test_downgrade_leaves_no_trace_failure: aaaa creates table "ignore"; bbbb creates foo
    and its downgrade renames foo to bar. pytest-alembic runs only its no-trace test (the
    four default tests are excluded) and it fails on bbbb.

    hokmdb fails bbbb's round trip and the one-command downgrade for the same reason (table
    bar is left). It also fails the drift test, which the example excludes: right, the
    models have no table "ignore" that the migrations create."""
    project = write(pytester.path / "trace", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision(
            "aaaaaaaaaaaa", None, CREATE_FOO.replace('"foo"', '"ignore"'), 'op.drop_table("ignore")'),
        "migrations/versions/bbbbbbbbbbbb_create_foo.py": revision(
            "bbbbbbbbbbbb", "aaaaaaaaaaaa", CREATE_FOO, 'op.rename_table("foo", "bar")'),
    })
    result = run_example(pytester, project)
    assert_failed(result, {
        "test_roundtrip.py::test_revision_round_trips[bbbbbbbbbbbb]",
        "test_upgrade.py::test_downgrade_from_head_in_one_go",
        "test_drift.py::test_models_match_the_migrations_at_head",
    })
    text = failure_text(result, "test_revision_round_trips[bbbbbbbbbbbb]")
    assert "its downgrade (to aaaaaaaaaaaa) leaves a trace" in text and "+relation public.bar: kind=r" in text, text
    assert "+relation public.bar: kind=r" in failure_text(result, "test_downgrade_from_head_in_one_go")
    assert "op.drop_table('ignore')" in failure_text(result, "test_models_match_the_migrations_at_head")


UNBATCHED = "[unbatched-data-change] changes the rows of existing table foo in one statement inside the revision"


def raising_downgrade_history(raise_in_bbbb: str) -> dict[str, str]:
    """test_failing_downgrade's shape: foo; bbbb empties foo and its downgrade raises; cccc
    adds foo.foo_id (and test_minimum_downgrade_revision's dddd adds foo.bar_id).

    In all three examples hokmdb's lint also fails bbbb (``unbatched-data-change``), which
    pytest-alembic has no counterpart for: right by hokmdb's lock-safety policy, since its
    ``DELETE FROM foo`` locks every row of a live table until the revision commits (the
    online way is a batched backfill in a revision of its own)."""
    return {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO, DROP_FOO),
        "migrations/versions/bbbbbbbbbbbb_create_foo.py": revision(
            "bbbbbbbbbbbb", "aaaaaaaaaaaa", EMPTY_FOO, raise_in_bbbb),
        "migrations/versions/cccccccccccc_create_foo.py": revision(
            "cccccccccccc", "bbbbbbbbbbbb", ADD_FOO_ID, DROP_FOO_ID),
    }


FOO_WITH_IDS_MODEL = FOO_MODEL + "    foo_id = Column(types.Integer())\n"


def test_minimum_downgrade_revision(pytester: pytest.Pytester) -> None:
    """test_minimum_downgrade_revision: bbbb's downgrade raises ("Cannot downgrade here!"),
    and minimum_downgrade_revision is cccc. pytest-alembic: pass. hokmdb: pass with the same
    setting (downgrades are proven above cccc only; the tests below say why they skip), but
    for the lint's finding on bbbb (see raising_downgrade_history)."""
    files = raising_downgrade_history('msg = "Cannot downgrade here!"\nraise ValueError(msg)')
    files["migrations/versions/dddddddddddd_create_foo.py"] = revision(
        "dddddddddddd", "cccccccccccc", ADD_FOO_ID.replace("foo_id", "bar_id"), DROP_FOO_ID.replace("foo_id", "bar_id"))
    project = write(pytester.path / "minimum", {
        **files,
        "models.py": MODELS_HEADER + FOO_WITH_IDS_MODEL + "    bar_id = Column(types.Integer())\n",
        "pyproject.toml": pyproject(metadata="models:Base.metadata", minimum_downgrade_revision="cccccccccccc"),
    })
    result = run_example(pytester, project)
    assert_failed(result, {"test_lint.py::test_revision_is_lock_safe[bbbbbbbbbbbb]"})
    assert UNBATCHED in failure_text(result, "test_revision_is_lock_safe[bbbbbbbbbbbb]")
    assert "revision bbbbbbbbbbbb is at or below minimum_downgrade_revision = 'cccccccccccc'" in result.stdout.str()


def test_unimplemented_downgrade_warning(pytester: pytest.Pytester) -> None:
    """test_unimplemented_downgrade_warning: bbbb's downgrade raises NotImplementedError.
    pytest-alembic passes and warns twice, suggesting minimum_downgrade_revision: it treats
    NotImplementedError as an implicit floor.

    hokmdb fails bbbb's round trip and the one-command downgrade, naming the error: right,
    ``alembic downgrade base`` from head does fail there, and hokmdb wants that declared
    rather than inferred from an exception (a NotImplementedError raised by a bug deep in a
    downgrade would otherwise pass unnoticed). Declared with ``irreversible = ["bbbb"]``,
    the counterpart of pytest-alembic's warning advice, the suite passes, but for the lint's
    finding on bbbb (see raising_downgrade_history)."""
    project = write(pytester.path / "unimplemented", {
        **raising_downgrade_history("raise NotImplementedError"),
        "models.py": MODELS_HEADER + FOO_WITH_IDS_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
    })
    result = run_example(pytester, project)
    assert_failed(result, {
        "test_roundtrip.py::test_revision_round_trips[bbbbbbbbbbbb]",
        "test_upgrade.py::test_downgrade_from_head_in_one_go",
        "test_lint.py::test_revision_is_lock_safe[bbbbbbbbbbbb]",
    })
    for test in ("test_revision_round_trips[bbbbbbbbbbbb]", "test_downgrade_from_head_in_one_go"):
        text = failure_text(result, test)
        assert "revision bbbbbbbbbbbb (bbbbbbbbbbbb_create_foo.py): its downgrade() failed" in text, text
        assert "NotImplementedError" in text, text

    (project / "pyproject.toml").write_text(pyproject(metadata="models:Base.metadata", irreversible=["bbbbbbbbbbbb"]))
    declared = run_example(pytester, project)
    assert_failed(declared, {"test_lint.py::test_revision_is_lock_safe[bbbbbbbbbbbb]"})
    assert "revision bbbbbbbbbbbb is listed as irreversible in [tool.hokmdb.migrations]" in declared.stdout.str()


def test_failing_downgrade(pytester: pytest.Pytester) -> None:
    """test_failing_downgrade: bbbb's downgrade raises ValueError("Something went wrong!").
    pytest-alembic: up/down consistency ("Failed to downgrade through each revision") and
    no-trace ("Something went wrong") fail, 3 pass. hokmdb: bbbb's round trip and the
    one-command downgrade fail with the same error; the rest passes, but for the lint's
    finding on bbbb (see raising_downgrade_history)."""
    project = write(pytester.path / "failing_downgrade", {
        **raising_downgrade_history('msg = "Something went wrong!"\nraise ValueError(msg)'),
        "models.py": MODELS_HEADER + FOO_WITH_IDS_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
    })
    result = run_example(pytester, project)
    assert_failed(result, {
        "test_roundtrip.py::test_revision_round_trips[bbbbbbbbbbbb]",
        "test_upgrade.py::test_downgrade_from_head_in_one_go",
        "test_lint.py::test_revision_is_lock_safe[bbbbbbbbbbbb]",
    })
    assert UNBATCHED in failure_text(result, "test_revision_is_lock_safe[bbbbbbbbbbbb]")
    for test in ("test_revision_round_trips[bbbbbbbbbbbb]", "test_downgrade_from_head_in_one_go"):
        text = failure_text(result, test)
        assert "its downgrade() failed" in text and "ValueError: Something went wrong!" in text, text


def test_skip_revision(pytester: pytest.Pytester) -> None:
    """test_skip_revision: bbbb's upgrade and downgrade are a bare ``raise``; cccc does
    nothing; skip_revisions = [bbbb]. pytest-alembic passes: its skip_revisions stamps bbbb
    instead of running it.

    hokmdb's skip_revisions skips bbbb's own tests but keeps bbbb on the upgrade path, since
    every real database went through it; so no database reaches cccc, and the tests that need
    cccc or head fail naming bbbb's upgrade. Right: ``alembic upgrade head`` fails on a new
    database, which stamping hides. (The same name means something else in the two tools:
    a revision pytest-alembic skips because it is slow is still run by hokmdb.)"""
    project = write(pytester.path / "skip", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata", skip_revisions=["bbbbbbbbbbbb"]),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO_STAMPED, DROP_FOO),
        "migrations/versions/bbbbbbbbbbb_raise.py": revision("bbbbbbbbbbbb", "aaaaaaaaaaaa", "raise", "raise", imports=""),
        "migrations/versions/cccccccccccc_success.py": revision("cccccccccccc", "bbbbbbbbbbbb", "pass", imports=""),
    })
    result = run_example(pytester, project)
    assert_failed(result, {
        "test_roundtrip.py::test_revision_round_trips[cccccccccccc]",
        # env.py has no offline mode, so cccc's SQL is recorded online, which needs a database at bbbb
        "test_lint.py::test_revision_is_lock_safe[cccccccccccc]",
        "test_upgrade.py::test_upgrade_from_base_to_head_in_one_go",
        "test_upgrade.py::test_downgrade_from_head_in_one_go",
        "test_drift.py::test_models_match_the_migrations_at_head",
        "test_drift.py::test_check_constraints_match_the_models",
        "test_drift.py::test_enum_labels_match_the_models",
    })
    for test in ("test_revision_round_trips[cccccccccccc]", "test_upgrade_from_base_to_head_in_one_go"):
        text = failure_text(result, test)
        assert "revision bbbbbbbbbbbb (bbbbbbbbbbb_raise.py): its upgrade() failed" in text, text
    assert "revision bbbbbbbbbbbb is listed in skip_revisions" in result.stdout.str()


def test_version_table_schema(pytester: pytest.Pytester) -> None:
    """test_version_table_schema: env.py keeps alembic's version table in schema
    version_table_schema, which the example's database fixture creates beforehand; one
    revision (test_no_data's aaaa). pytest-alembic: pass. hokmdb: pass, the schema created by
    ``prerequisites``, the version table left out of the catalog comparisons."""
    project = write(pytester.path / "version_schema", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(configure=',\n                      version_table_schema="version_table_schema"'),
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "before_alembic.sql": "CREATE SCHEMA version_table_schema;\n",
        "pyproject.toml": pyproject(metadata="models:Base.metadata", model_modules=["models"],
                                    prerequisites="before_alembic.sql"),
        "migrations/versions/aaaaaaaaaaaa_create_foo.py": revision("aaaaaaaaaaaa", None, CREATE_FOO_STAMPED, DROP_FOO),
    })
    assert_passed(run_example(pytester, project))


def test_async_sqlalchemy(pytester: pytest.Pytester) -> None:
    """test_async_sqlalchemy: an async env.py that calls ``asyncio.run`` at import and drives
    whatever engine it is handed with ``async with engine.connect()``; test_no_data's
    history. pytest-alembic (handing over an AsyncEngine): pass. hokmdb: pass."""
    project = write(pytester.path / "async_env", {
        "alembic.ini": ini(),
        "migrations/env.py": ASYNC_ENV,
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata"),
        **no_data_history(),
    })
    assert_passed(run_example(pytester, project))


def test_async_sqlalchemy_native(pytester: pytest.Pytester) -> None:
    """test_async_sqlalchemy_native: env.py drives an AsyncEngine with asyncio.run, any other
    engine with ``connect()``; row id 9 inserted before bbbb, which asserts it. pytest-alembic:
    pass (its no-trace and all-models-register tests included). hokmdb: pass."""
    project = write(pytester.path / "async_native", {
        "alembic.ini": ini(),
        "migrations/env.py": ASYNC_NATIVE_ENV,
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pa_data.py": upgrade_path_data({"bbbbbbbbbbbb": {"foo": [{"id": 9}]}}),
        "pyproject.toml": pyproject(metadata="models:Base.metadata", model_modules=["models"], data_fixtures="pa_data.py"),
        **no_data_history(second=FOO_HOLDS_ROW_9),
    })
    assert_passed(run_example(pytester, project))


def test_experimental_all_models_register_async(pytester: pytest.Pytester) -> None:
    """test_experimental_all_models_register_async: as test_async_sqlalchemy_native, but
    anything other than an AsyncEngine is used as the connection itself. pytest-alembic: its
    all-models-register test passes. hokmdb: pass."""
    project = write(pytester.path / "async_register", {
        "alembic.ini": ini(),
        "migrations/env.py": ASYNC_OR_CONNECTION_ENV,
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pa_data.py": upgrade_path_data({"bbbbbbbbbbbb": {"foo": [{"id": 9}]}}),
        "pyproject.toml": pyproject(metadata="models:Base.metadata", model_modules=["models"], data_fixtures="pa_data.py"),
        **no_data_history(second=FOO_HOLDS_ROW_9),
    })
    assert_passed(run_example(pytester, project))


def test_experimental_all_models_register_offline(pytester: pytest.Pytester) -> None:
    """test_experimental_all_models_register_offline: env.py with an offline mode (configured
    from the ini's URL); test_no_data's history. pytest-alembic: its all-models-register test
    (offline) passes. hokmdb: pass (its lint renders the revisions offline)."""
    project = write(pytester.path / "offline", {
        "alembic.ini": ini(),
        "migrations/env.py": OFFLINE_ENV,
        "migrations/__init__.py": "",
        "models.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata", model_modules=["models"]),
        **no_data_history(),
    })
    assert_passed(run_example(pytester, project))


def test_experimental_all_models_register_namespace_package(pytester: pytest.Pytester) -> None:
    """test_experimental_all_models_register_namespace_package: the models live in foo.bar,
    foo being a namespace package (no __init__.py), which env.py imports after putting the
    current directory on sys.path. pytest-alembic: pass (4 + all-models-register). hokmdb:
    pass, with ``model_modules = ["foo.bar"]``."""
    project = write(pytester.path / "namespace", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(
            prelude="import sys\nfrom pathlib import Path\n\n",
            models="sys.path.append(str(Path().resolve()))\n\nfrom foo.bar import Base"),
        "migrations/__init__.py": "",
        "foo/bar/__init__.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "pyproject.toml": pyproject(metadata="foo.bar:Base.metadata", model_modules=["foo.bar"]),
        **no_data_history(),
    })
    assert_passed(run_example(pytester, project))


def test_experimental_all_models_register_failure(pytester: pytest.Pytester) -> None:
    """test_experimental_all_models_register_failure: the package ``models`` defines foo in
    its __init__, and models/bar.py a Bar model that nothing imports. pytest-alembic's
    all-models-register test on ``models`` fails naming 'models' and ": bar".

    hokmdb lists model modules instead of walking a package (``model_modules = ["models",
    "models.bar"]``) and fails ``test_every_model_module_contributes_to_the_metadata`` for
    the same reason: models.bar is not imported by the metadata's module, so env.py and
    autogenerate never see bar."""
    project = write(pytester.path / "unregistered", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(),
        "migrations/__init__.py": "",
        "models/__init__.py": MODELS_HEADER + FOO_STAMPED_MODEL,
        "models/bar.py": "from sqlalchemy import Column, types\n\nfrom models import Base\n" + BAR_MODEL,
        "pyproject.toml": pyproject(metadata="models:Base.metadata", model_modules=["models", "models.bar"]),
        **no_data_history(),
    })
    result = run_example(pytester, project)
    assert_failed(result, {"test_drift.py::test_every_model_module_contributes_to_the_metadata"})
    text = failure_text(result, "test_every_model_module_contributes_to_the_metadata")
    assert "model module models.bar is not imported by the metadata's module (models:Base.metadata): its tables bar" in text, text


def test_experimental_all_models_register_no_metadata(pytester: pytest.Pytester) -> None:
    """test_experimental_all_models_register_no_metadata: env.py passes no target_metadata and
    models.py has no MetaData. pytest-alembic's all-models-register test fails: "Unable to
    locate a MetaData". hokmdb, with nothing configured, fails every drift test for the same
    reason: metadata is not set (there are no models to compare with)."""
    project = write(pytester.path / "no_metadata", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(models="", metadata=None),
        "migrations/__init__.py": "",
        "models.py": "# No MetaData\n",
        **no_data_history(),
    })
    result = run_example(pytester, project)
    drift = {"test_models_match_the_migrations_at_head", "test_every_model_module_contributes_to_the_metadata",
             "test_check_constraints_match_the_models", "test_enum_labels_match_the_models"}
    assert_failed(result, {f"test_drift.py::{test}" for test in drift})
    text = failure_text(result, "ERROR at setup of test_models_match_the_migrations_at_head")
    assert "[tool.hokmdb.migrations] metadata is not set" in text, text


def test_experimental_all_models_register_metadata(pytester: pytest.Pytester) -> None:
    """test_experimental_all_models_register_metadata: models.py holds a bare, empty MetaData
    that env.py uses; test_no_data's history. pytest-alembic runs only its all-models-register
    test, which passes (there is nothing to register).

    hokmdb takes the bare MetaData as it is and passes everything but the drift test, which
    the example does not run: right, the models describe no table while the migrations create
    foo, so autogenerate would drop it (pytest-alembic's own model test would say the same)."""
    project = write(pytester.path / "bare_metadata", {
        "alembic.ini": ini(),
        "migrations/env.py": sync_env(models="from models import metadata", metadata="metadata"),
        "migrations/__init__.py": "",
        "models.py": "from sqlalchemy import MetaData\n\nmetadata = MetaData()\n",
        "pyproject.toml": pyproject(metadata="models:metadata"),
        **no_data_history(),
    })
    result = run_example(pytester, project)
    assert_failed(result, {"test_drift.py::test_models_match_the_migrations_at_head"})
    assert "op.drop_table('foo')" in failure_text(result, "test_models_match_the_migrations_at_head")

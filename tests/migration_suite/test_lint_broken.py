"""The lock-safety lint fails broken revisions, for the right rule, naming the revision.

Each test builds a small alembic project of its own in a temporary directory (alembic.ini,
a stock-style env.py, versions/, a models module and a pyproject.toml with
``[tool.hokmdb.migrations]``) whose history holds one lock-safety mistake per revision, then
lints it with ``pytest_hokmdb.migration.lint`` directly, and end to end by running
``pytest --hokmdb-migrations hokmdb-migrations/test_lint.py`` in it with pytester. The lint reads offline SQL only,
so none of this needs a database.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_hokmdb.migration.lint import MigrationLinter, RevisionLint
from pytest_hokmdb.migration.settings import load_settings

REPO = Path(__file__).resolve().parents[2]

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = .
path_separator = os
sqlalchemy.url = postgresql://
"""

# The env.py `alembic init` writes, reduced to what the lint uses (offline mode), with the
# per-revision transactions hokmdb's own env.py uses. TRANSACTIONAL_DDL False renders no
# BEGIN/COMMIT offline, the case where the lint has to read the revision's source instead.
ENV_PY = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
TRANSACTIONAL_DDL = {transactional_ddl}


def run_migrations_offline():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        transaction_per_migration=True,
        transactional_ddl=TRANSACTIONAL_DDL,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = engine_from_config(config.get_section(config.config_ini_section, {{}}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

REVISION = '''\
"""{doc}

Revision ID: {rev}
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down_repr}
branch_labels = None
depends_on = None
{extra}

def upgrade():
{upgrade}


def downgrade():
    pass
'''

LOCK_TIMEOUT = "    op.execute(\"SET LOCAL lock_timeout = '1s'\")\n"

# (revision id, docstring, module-level extra source, upgrade() body); each builds on the last.
HISTORY: list[tuple[str, str, str, str]] = [
    (
        "r01",
        "Accounts: a new table, safe to create while the server runs.",
        "",
        '    op.create_table("accounts", sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),\n'
        '                    sa.Column("email", sa.Text, nullable=False))\n'
        '    op.create_index("ix_accounts_id_email", "accounts", ["id", "email"])',
    ),
    (
        "r02",
        "Index accounts(email) without CONCURRENTLY: blocks writes while it builds.",
        "",
        LOCK_TIMEOUT + '    op.create_index("ix_accounts_email", "accounts", ["email"])',
    ),
    (
        "r03",
        "Add a NOT NULL column without a default: fails on any existing row.",
        "",
        LOCK_TIMEOUT + '    op.add_column("accounts", sa.Column("tier", sa.Text, nullable=False))',
    ),
    (
        "r04",
        "CONCURRENTLY without an autocommit block: PostgreSQL refuses it in a transaction.",
        "",
        LOCK_TIMEOUT
        + '    op.create_index("ix_accounts_lower_email", "accounts", [sa.text("lower(email)")],\n'
        "                    postgresql_concurrently=True, if_not_exists=True)",
    ),
    (
        "r05",
        "Add a nullable column with no lock_timeout: queues behind long transactions.",
        "",
        '    op.add_column("accounts", sa.Column("nickname", sa.Text, nullable=True))',
    ),
    (
        "r06",
        "Same mistake as r05, waived with a reason.",
        'hokmdb_lint_waivers = {"require-lock-timeout": "accounts is only written by the nightly batch job"}\n',
        '    op.add_column("accounts", sa.Column("note", sa.Text, nullable=True))',
    ),
    (
        "r07",
        "Same mistake as r05, waived without a reason.",
        'hokmdb_lint_waivers = {"require-lock-timeout": ""}\n',
        '    op.add_column("accounts", sa.Column("motto", sa.Text, nullable=True))',
    ),
    (
        "r08",
        "A session-level lock_timeout that is never reset leaks into later revisions.",
        "",
        "    with op.get_context().autocommit_block():\n"
        "        op.execute(\"SET lock_timeout = '1s'\")\n"
        '        op.create_index("ix_accounts_nickname", "accounts", ["nickname"],\n'
        "                        postgresql_concurrently=True, if_not_exists=True)",
    ),
    (
        "r09",
        "Done right: CONCURRENTLY in an autocommit block, lock_timeout set and reset.",
        "",
        "    with op.get_context().autocommit_block():\n"
        "        op.execute(\"SET lock_timeout = '1s'\")\n"
        "        try:\n"
        '            op.create_index("ix_accounts_note", "accounts", ["note"],\n'
        "                            postgresql_concurrently=True, if_not_exists=True)\n"
        "        finally:\n"
        '            op.execute("RESET lock_timeout")',
    ),
]

# Squawk's notes that are not what these tests are about.
BASE_RULES = {"require-statement-timeout": "ignored"}


def make_project(
    root: Path,
    *,
    rules: dict[str, str] | None = None,
    require_lock_timeout: bool = True,
    transactional_ddl: bool = True,
    history: list[tuple[str, str, str, str]] = HISTORY,
) -> Path:
    """Write an alembic project with ``history`` under ``root``; return ``root``."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (root / "alembic.ini").write_text(ALEMBIC_INI)
    (root / "migrations" / "env.py").write_text(ENV_PY.format(transactional_ddl=transactional_ddl))
    (root / "lintproj_models.py").write_text(
        '"""Models of the lint test project (the suite wants a metadata to point at)."""\n'
        "import sqlalchemy as sa\n\nmetadata = sa.MetaData()\n"
    )
    down: str | None = None
    for rev, doc, extra, body in history:
        (versions / f"{rev}.py").write_text(
            REVISION.format(
                doc=doc, rev=rev, down=down or "", down_repr=repr(down), extra=extra, upgrade=body
            )
        )
        down = rev
    all_rules = {**BASE_RULES, **(rules or {})}
    rule_lines = "\n".join(f'"{rule}" = "{severity}"' for rule, severity in all_rules.items())
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [tool.hokmdb.migrations]
            alembic_ini = "alembic.ini"
            metadata = "lintproj_models:metadata"
            model_modules = ["lintproj_models"]

            [tool.hokmdb.migrations.lint]
            default = "error"
            require_lock_timeout = {str(require_lock_timeout).lower()}

            [tool.hokmdb.migrations.lint.rules]
            """
        )
        + rule_lines
        + "\n"
    )
    return root


def lint_project(root: Path) -> dict[str, RevisionLint]:
    linter = MigrationLinter(load_settings(root))
    return {rev: linter.lint(rev) for rev in linter.revisions()}


def rules(result: RevisionLint, severity: str = "error") -> set[str]:
    return {f.rule for f in result.findings if f.severity == severity}


@pytest.fixture(scope="module")
def default_lint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RevisionLint]:
    """The broken history under the default policy (every rule an error), linted once."""
    return lint_project(make_project(tmp_path_factory.mktemp("lintproj")))


def assert_fails_for(result: RevisionLint, rule: str) -> None:
    assert rule in rules(result), result.report()
    message = result.failure_message()
    assert f"revision {result.revision}" in message and f"[{rule}]" in message, message


def test_history_order_is_base_to_head(default_lint: dict[str, RevisionLint]) -> None:
    assert list(default_lint) == [rev for rev, *_ in HISTORY]


def test_new_table_and_its_index_need_no_lock_timeout(default_lint: dict[str, RevisionLint]) -> None:
    """Nobody else can see a table before its revision commits, and alembic_version's DDL
    is alembic's, not the revision's: r01 is clean."""
    assert default_lint["r01"].findings == [], default_lint["r01"].report()


def test_index_without_concurrently_on_existing_table_fails(default_lint: dict[str, RevisionLint]) -> None:
    result = default_lint["r02"]
    assert_fails_for(result, "require-concurrent-index-creation")
    assert "ix_accounts_email" in result.failure_message()
    assert "require-lock-timeout" not in rules(result)  # r02 sets one


def test_not_null_column_without_default_fails(default_lint: dict[str, RevisionLint]) -> None:
    result = default_lint["r03"]
    assert_fails_for(result, "adding-required-field")
    assert "ADD COLUMN tier" in result.failure_message()


def test_concurrently_outside_autocommit_block_fails(default_lint: dict[str, RevisionLint]) -> None:
    result = default_lint["r04"]
    assert_fails_for(result, "concurrently-outside-autocommit-block")
    assert "CREATE INDEX CONCURRENTLY" in result.failure_message()
    assert "autocommit_block" in result.failure_message()
    # squawk's narrower rule for the same mistake is superseded, not reported twice
    assert "ban-concurrent-index-creation-in-transaction" not in rules(result)


def test_concurrently_outside_autocommit_block_found_in_source_when_sql_has_no_transactions(
    tmp_path: Path,
) -> None:
    """An env.py without transactional DDL renders no BEGIN/COMMIT, so the SQL cannot show
    the mistake; the revision's source does."""
    results = lint_project(make_project(tmp_path, transactional_ddl=False))
    assert "BEGIN" not in results["r04"].sql
    assert_fails_for(results["r04"], "concurrently-outside-autocommit-block")
    assert "r04.py:" in results["r04"].failure_message()
    assert "concurrently-outside-autocommit-block" not in rules(results["r09"])


def test_missing_lock_timeout_fails(default_lint: dict[str, RevisionLint]) -> None:
    result = default_lint["r05"]
    assert_fails_for(result, "require-lock-timeout")
    message = result.failure_message()
    assert "accounts" in message and "ADD COLUMN nickname" in message and "SET LOCAL lock_timeout" in message


def test_waiver_with_reason_suppresses_and_is_kept_for_the_report(
    default_lint: dict[str, RevisionLint],
) -> None:
    result = default_lint["r06"]
    assert result.findings == [], result.report()
    assert [(w.finding.rule, w.reason) for w in result.waived] == [
        ("require-lock-timeout", "accounts is only written by the nightly batch job")
    ]
    assert "waived: accounts is only written by the nightly batch job" in result.report()


def test_waiver_without_reason_is_a_finding_and_waives_nothing(default_lint: dict[str, RevisionLint]) -> None:
    result = default_lint["r07"]
    assert_fails_for(result, "waiver-without-reason")
    assert_fails_for(result, "require-lock-timeout")
    assert "r07.py:" in result.failure_message()
    assert result.waived == []


def test_session_lock_timeout_not_reset_fails(default_lint: dict[str, RevisionLint]) -> None:
    result = default_lint["r08"]
    assert_fails_for(result, "lock-timeout-not-reset")
    assert "require-lock-timeout" not in rules(result)


def test_safe_concurrent_index_is_clean(default_lint: dict[str, RevisionLint]) -> None:
    assert default_lint["r09"].findings == [], default_lint["r09"].report()


def test_rule_set_to_warning_reports_without_failing(tmp_path: Path) -> None:
    results = lint_project(make_project(tmp_path, rules={"adding-required-field": "warning"}))
    result = results["r03"]
    assert result.errors == [], result.report()
    assert [f.rule for f in result.warnings] == ["adding-required-field"]
    assert "revision r03: [adding-required-field]" in result.warnings[0].render()


def test_rule_set_to_ignored_is_dropped(tmp_path: Path) -> None:
    results = lint_project(
        make_project(
            tmp_path, rules={"require-concurrent-index-creation": "ignored"}, require_lock_timeout=False
        )
    )
    assert results["r02"].findings == [], results["r02"].report()
    assert "require-lock-timeout" not in rules(results["r05"])


def test_offline_sql_failure_is_a_finding(tmp_path: Path) -> None:
    """A revision that needs a live database to render cannot be linted: that is reported,
    not silently skipped."""
    history = HISTORY[:1] + [
        (
            "r02",
            "Queries the database unconditionally.",
            "",
            '    op.get_bind().execute(sa.text("SELECT 1")).scalar()',
        )
    ]
    results = lint_project(make_project(tmp_path, history=history))
    assert_fails_for(results["r02"], "offline-sql-unavailable")


def test_end_to_end_errors_fail_and_name_revision_and_rule(pytester: pytest.Pytester) -> None:
    make_project(pytester.path)
    result = pytester.runpytest_subprocess(
        "--hokmdb-migrations", "hokmdb-migrations/test_lint.py", "-p", "no:cacheprovider"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 3 and outcomes.get("failed") == 6, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*test_revision_is_lock_safe?r02?*",
            "*revision r02 (r02.py) is not lock-safe*",
            "*revision r02: ?require-concurrent-index-creation?*",
        ],
        consecutive=False,
    )
    result.stdout.fnmatch_lines(["*revision r05: ?require-lock-timeout?*accounts*"])
    result.stdout.fnmatch_lines(["*FAILED*test_revision_is_lock_safe?r04?*"])
    result.stdout.no_fnmatch_line("*FAILED*test_revision_is_lock_safe?r06?*")


def test_end_to_end_warnings_pass_and_show_in_quiet_output(pytester: pytest.Pytester) -> None:
    # r01 then r03 (NOT NULL without a default); make_project chains them in this order.
    make_project(pytester.path, rules={"adding-required-field": "warning"}, history=[HISTORY[0], HISTORY[2]])
    result = pytester.runpytest_subprocess(
        "--hokmdb-migrations", "hokmdb-migrations/test_lint.py", "-p", "no:cacheprovider", "-q"
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*2 passed*warning*"])
    result.stdout.fnmatch_lines(["*MigrationLintWarning: revision r03: ?adding-required-field?*"])


def test_merge_revision_is_linted_from_both_parents(tmp_path: Path) -> None:
    """A merge revision's SQL is rendered from all its parents, so it holds only its own
    statements (and alembic's bookkeeping), not the other branch's revisions."""
    history = [HISTORY[0], HISTORY[4]]  # r01, then r05 (a column without lock_timeout)
    root = make_project(tmp_path, history=history)
    versions = root / "migrations" / "versions"
    branch = '    op.create_table("other", sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True))'
    (versions / "r10.py").write_text(
        REVISION.format(
            doc="A branch off r01.", rev="r10", down="r01", down_repr="'r01'", extra="", upgrade=branch
        )
    )
    (versions / "r11.py").write_text(
        REVISION.format(
            doc="Merge r05 and r10.",
            rev="r11",
            down="r05, r10",
            down_repr="('r05', 'r10')",
            extra="",
            upgrade="    pass",
        )
    )
    results = lint_project(root)
    assert set(results) == {"r01", "r05", "r10", "r11"}
    assert results["r11"].findings == [], results["r11"].report()
    assert "ADD COLUMN" not in results["r11"].sql and "CREATE TABLE" not in results["r11"].sql
    assert_fails_for(results["r05"], "require-lock-timeout")


RAISING = [
    HISTORY[0],
    ("r02", "Follows the old advice: raises lock_timeout to 5s.", "",
     "    op.execute(\"SET LOCAL lock_timeout = '5s'\")\n"
     '    op.add_column("accounts", sa.Column("nickname", sa.Text, nullable=True))'),
    ("r03", "Switches statement_timeout off for a long data change.", "",
     "    op.execute(\"SET LOCAL statement_timeout = 0\")\n"
     '    op.add_column("accounts", sa.Column("note", sa.Text, nullable=True))'),
    ("r04", "Lowers lock_timeout: always allowed.", "",
     "    op.execute(\"SET LOCAL lock_timeout = '200ms'\")\n"
     '    op.add_column("accounts", sa.Column("motto", sa.Text, nullable=True))'),
    ("r05", "Raises it with a waiver and its reason.",
     'hokmdb_lint_waivers = {"raises-timeout": "accounts is written only by the nightly batch, which is paused"}\n',
     "    op.execute(\"SET LOCAL lock_timeout = '10s'\")\n"
     '    op.add_column("accounts", sa.Column("tier", sa.Text, nullable=True))'),
]


def test_a_revision_that_raises_the_deploys_timeouts_is_refused_with_the_reason(tmp_path: Path) -> None:
    """The deploy owns lock_timeout and statement_timeout; a revision may lower them only.
    No revision here sets its own lock_timeout as a duty any more (require_lock_timeout off)."""
    results = lint_project(make_project(tmp_path, history=RAISING, require_lock_timeout=False))
    assert_fails_for(results["r02"], "raises-timeout")
    message = results["r02"].failure_message()
    assert "raises lock_timeout: sets it to '5s', above the deploy's 1000 ms" in message
    assert "the deploy sets lock_timeout for every statement" in message
    assert_fails_for(results["r03"], "raises-timeout")
    assert "raises statement_timeout: switches it off (0), above the deploy's 30000 ms" in results["r03"].failure_message()
    assert "raises-timeout" not in rules(results["r04"]), results["r04"].report()
    assert results["r05"].findings == [], results["r05"].report()
    assert "waived: accounts is written only by the nightly batch" in results["r05"].report()


def test_the_deploy_lints_against_its_own_environment_s_budget(tmp_path: Path) -> None:
    """What is a raise depends on the environment: 5s is within a 10 s budget."""
    linter = MigrationLinter(load_settings(make_project(tmp_path, history=RAISING[:2], require_lock_timeout=False)),
                             budgets=(10_000, 0))
    assert "raises-timeout" not in rules(linter.lint("r02")), linter.lint("r02").report()
    strict = MigrationLinter(load_settings(tmp_path), budgets=(500, 0))
    assert "above the deploy's 500 ms" in strict.lint("r02").failure_message()


UNBATCHED = [
    HISTORY[0],
    ("r02", "The old way: rewrite every row inside the revision.", "",
     '    op.add_column("accounts", sa.Column("domain", sa.Text, nullable=True))\n'
     "    op.execute(\"UPDATE accounts SET domain = split_part(email, '@', 2)\")"),
    ("r03", "The online way: the same change as a batched backfill.",
     "from pytest_hokmdb.migration.online import backfill\n",
     "    backfill(\"accounts\", set_=\"domain = split_part(email, '@', 2)\", where=\"domain IS NULL\")"),
    ("r04", "A table this revision creates may be filled in place: nobody else sees it yet.", "",
     '    op.create_table("domains", sa.Column("name", sa.Text, primary_key=True))\n'
     "    op.execute(\"INSERT INTO domains SELECT DISTINCT domain FROM accounts WHERE domain IS NOT NULL\")\n"
     "    op.execute(\"UPDATE domains SET name = lower(name)\")"),
]


def test_a_data_change_inside_a_revision_is_refused_and_the_online_way_is_named(tmp_path: Path) -> None:
    """What the old revision 0005 did (UPDATE every row of moves in its transaction) is what
    the benchmark showed stalling the game; the lint now stops it before the deploy starts."""
    results = lint_project(make_project(tmp_path, history=UNBATCHED, require_lock_timeout=False))
    assert_fails_for(results["r02"], "unbatched-data-change")
    message = results["r02"].failure_message()
    assert "changes the rows of existing table accounts in one statement inside the revision" in message
    assert "backfill(table, set_=..., where=<rows that still need it>) from pytest_hokmdb.migration.online" in message
    assert "unbatched-data-change" not in rules(results["r03"]), results["r03"].report()
    assert "-- hokmdb:backfill accounts: run online in batches of 1000 rows" in results["r03"].sql
    assert "unbatched-data-change" not in rules(results["r04"]), results["r04"].report()


def test_a_revision_that_cannot_render_offline_is_linted_from_the_sql_it_runs(pytester: pytest.Pytester) -> None:
    """In the suite, a revision that queries the database (so alembic cannot write it as
    offline SQL) is linted from the statements it sends while it upgrades a throwaway copy
    at its parent: its unsafe index is found, not hidden behind offline-sql-unavailable."""
    history = HISTORY[:1] + [(
        "r02",
        "Index emails only when there are accounts (asks the database first).",
        "",
        LOCK_TIMEOUT + '    if op.get_bind().execute(sa.text("SELECT count(*) >= 0 FROM accounts")).scalar():\n'
        '        op.create_index("ix_accounts_email", "accounts", ["email"])',
    )]
    make_project(pytester.path, history=history)
    result = pytester.runpytest_subprocess(
        "--hokmdb-migrations", "hokmdb-migrations/test_lint.py", "-p", "no:cacheprovider", "-q"
    )
    out = result.stdout.str()
    assert result.ret == 1, out
    result.stdout.fnmatch_lines(["*revision r02: ?require-concurrent-index-creation?*",
                                 "*at recorded SQL line *CREATE INDEX ix_accounts_email ON accounts (email)*"],
                                consecutive=False)
    assert "offline-sql-unavailable" not in out, out
    result.stdout.fnmatch_lines(["*1 failed, 1 passed*"])

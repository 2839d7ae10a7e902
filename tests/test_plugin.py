"""The plugin as users meet it: run inner pytest sessions with pytester against real
clusters and check options, guards, messages, exit codes and redaction."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from helpers import APP_PASSWORD, write_config_dir

INNER_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
addopts = --strict-markers
"""


@pytest.fixture(autouse=True)
def _inner_project(pytester: pytest.Pytester) -> None:
    """Inner sessions are configured like a user's project that runs async checks."""
    pytester.makeini(INNER_INI)


WRITE_TEST = """
async def test_write(hokmdb_conn):
    await hokmdb_conn.execute("CREATE TABLE written_by_test (id int)")
"""


def test_options_and_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--environment=*", "*--db-config=PATH*", "*--allow-destructive*"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.smoke:*", "@pytest.mark.destructive:*", "@pytest.mark.environments(*names)*", "@pytest.mark.slow:*"])


def test_live_fixture_without_environment_says_how_to_pick_one(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOKMDB_ENVIRONMENT", raising=False)
    pytester.makepyfile("def test_needs_db(hokmdb_config):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no environment selected: pass --environment NAME (development, testing, staging, production)*"])


def test_missing_secret_exits_2_naming_file_key_and_variable(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DB_HOST_PRODUCTION", "DB_PASSWORD_PRODUCTION"):
        monkeypatch.delenv(var, raising=False)
    config_dir = tmp_path / "cfg"
    write_config_dir(config_dir, "production")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--environment", "production", f"--db-config={config_dir}")
    assert result.ret == 2
    result.stderr.fnmatch_lines([
        f"*configuration {config_dir / 'production.json'} is invalid (2 problems)*",
        "*database.host: environment variable DB_HOST_PRODUCTION is not set*",
        "*database.password: environment variable DB_PASSWORD_PRODUCTION is not set*",
    ])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_unknown_key_and_wrong_type_exit_2(pytester: pytest.Pytester, tmp_path: Path) -> None:
    config_dir = tmp_path / "cfg"
    write_config_dir(config_dir, "development", database__prot=1, pool={"max_size": "many"})
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--environment", "development", f"--db-config={config_dir}")
    assert result.ret == 2
    result.stderr.fnmatch_lines(["*database.prot: unknown key*", "*pool.max_size: Input should be a valid integer*'many'*"])
    assert "Traceback" not in result.stderr.str()


def test_env_var_selects_environment_and_header_names_target(pytester: pytest.Pytester, staging_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOKMDB_ENVIRONMENT", "staging")
    pytester.makepyfile("def test_x(hokmdb_dsn):\n    assert hokmdb_dsn.startswith('postgresql://hokm_app:***@127.0.0.1')\n")
    result = pytester.runpytest(f"--db-config={staging_env}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "hokmdb: environment staging (read-only sessions), config *staging.json",
        "hokmdb: target postgresql://hokm_app:***@127.0.0.1:*/hokm_staging?sslmode=verify-full, PostgreSQL 15.*",
    ])
    assert APP_PASSWORD not in result.stdout.str()


def test_staging_sessions_are_read_only_and_verified_tls(pytester: pytest.Pytester, staging_env: Path) -> None:
    pytester.makepyfile(
        WRITE_TEST
        + """
async def test_tls(hokmdb_conn):
    assert await hokmdb_conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")

async def test_engine_is_read_only_too(hokmdb_engine):
    from sqlalchemy import text
    async with hokmdb_engine.connect() as conn:
        assert (await conn.execute(text("SHOW default_transaction_read_only"))).scalar() == "on"
"""
    )
    result = pytester.runpytest("--environment", "staging", f"--db-config={staging_env}")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*cannot execute CREATE TABLE in a read-only transaction*"])


def test_destructive_refused_on_staging_without_flag_and_allowed_with_it(pytester: pytest.Pytester, staging_env: Path) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.destructive
async def test_write(hokmdb_conn):
    await hokmdb_conn.execute("CREATE TEMP TABLE scratch (id int)")
    assert await hokmdb_conn.fetchval("SHOW transaction_read_only") == "off"
"""
    )
    refused = pytester.runpytest("--environment", "staging", f"--db-config={staging_env}")
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines(["*refused: *test_write is marked destructive; on staging it runs only with --allow-destructive*"])
    allowed = pytester.runpytest("--environment", "staging", f"--db-config={staging_env}", "--allow-destructive")
    allowed.assert_outcomes(passed=1)


def test_destructive_never_runs_on_production(pytester: pytest.Pytester, staging_env: Path) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.destructive
def test_drop_everything(hokmdb_conn):
    raise AssertionError("must never run")
"""
    )
    result = pytester.runpytest("--environment", "production", f"--db-config={staging_env}", "--allow-destructive")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*refused: *test_drop_everything is marked destructive and destructive tests never run on production*"])
    assert "must never run" not in result.stdout.str()


def test_production_is_read_only(pytester: pytest.Pytester, staging_env: Path) -> None:
    pytester.makepyfile(WRITE_TEST)
    result = pytester.runpytest("--environment", "production", f"--db-config={staging_env}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*read-only transaction*"])


def test_environments_marker_skips_with_reason_and_rejects_unknown_names(pytester: pytest.Pytester, staging_env: Path) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.environments("development", "testing")
def test_dev_only():
    pass

@pytest.mark.environments("staging")
def test_staging_only():
    pass
"""
    )
    result = pytester.runpytest("--environment", "staging", f"--db-config={staging_env}", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*runs only on development, testing (this session: staging)*"])
    pytester.makepyfile("import pytest\n\n@pytest.mark.environments('prod')\ndef test_typo():\n    pass\n")
    bad = pytester.runpytest()
    bad.stderr.fnmatch_lines(["*@pytest.mark.environments needs names from development, testing, staging, production, got prod*"])


def test_unregistered_marker_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n\n@pytest.mark.smok\ndef test_typo():\n    pass\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*'smok' not found in `markers` configuration option*"])


def test_password_never_appears_in_the_output_of_a_failing_run(pytester: pytest.Pytester, staging_env: Path) -> None:
    pytester.makepyfile(
        """
import logging

async def test_leaky(hokmdb_target, hokmdb_conn):
    secret = hokmdb_target.password
    print("dsn is", hokmdb_target.dsn(redacted=False))
    logging.getLogger("app").error("password=%s", secret)
    assert secret == "something else", f"connect with {secret}"
"""
    )
    result = pytester.runpytest("--environment", "staging", f"--db-config={staging_env}", "-l", "-rA")
    result.assert_outcomes(failed=1)
    output = result.stdout.str() + result.stderr.str()
    assert APP_PASSWORD not in output
    assert "connect with ***" in output
    assert "postgresql://hokm_app:***@127.0.0.1" in output


def test_alembic_config_fixture_is_bound_to_the_target(pytester: pytest.Pytester, staging_env: Path) -> None:
    pytester.makepyfile(
        """
async def test_head(hokmdb_alembic_config, hokmdb_conn):
    from alembic.script import ScriptDirectory
    from pytest_hokmdb.migrate import current_revision
    head = ScriptDirectory.from_config(hokmdb_alembic_config).get_current_head()
    assert await current_revision(hokmdb_conn) == head
    assert hokmdb_alembic_config.attributes["hokmdb_target"].read_only
"""
    )
    result = pytester.runpytest("--environment", "staging", f"--db-config={staging_env}")
    result.assert_outcomes(passed=1)


USER_SUITE = '''
import asyncio

LOOPS = []


async def test_first():
    LOOPS.append(id(asyncio.get_running_loop()))


async def test_second():
    LOOPS.append(id(asyncio.get_running_loop()))


def test_each_async_test_had_its_own_loop():
    assert len(LOOPS) == 2 and LOOPS[0] != LOOPS[1], LOOPS
'''


def test_a_users_own_async_suite_behaves_the_same_with_and_without_hokmdb(pytester: pytest.Pytester) -> None:
    """pytest-asyncio's default is a loop per test; hokmdb installed beside a user's suite must
    not turn that into one session loop (its hooks act on hokmdb's own fixtures only)."""
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile(test_users_suite=USER_SUITE)
    with_hokmdb = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hokmdb", "-p", "no:hokmdb-allure")
    without.assert_outcomes(passed=3)
    with_hokmdb.assert_outcomes(passed=3)


PRESTART_TESTS = """
import os, time
from pathlib import Path

import pytest

SCRATCH = Path(os.environ["HOKMDB_SCRATCH_DIR"])


def clusters():
    return [p for p in SCRATCH.iterdir() if p.is_dir() and p.name != "ports"] if SCRATCH.is_dir() else []


def test_a_no_database_test_runs_while_the_cluster_starts():
    deadline = time.monotonic() + 30
    while not clusters() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(clusters()) == 1, "the cluster was not started at the end of collection"


def test_the_fixture_takes_the_prestarted_cluster(hokmdb_cluster):
    assert len(clusters()) == 1 and hokmdb_cluster.base_dir == clusters()[0], (hokmdb_cluster.base_dir, clusters())


@pytest.mark.skip(reason="never runs: its cluster is started anyway, and removed at the end")
def test_skipped(hokmdb_cluster):
    pass
"""


@pytest.mark.parametrize("taken", [True, False], ids=["taken", "never-taken"])
def test_the_cluster_starts_during_the_first_tests_and_is_always_removed(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: bool
) -> None:
    """A run with a test that needs the throwaway cluster starts it at the end of collection,
    on a thread, so it is ready when that test comes; whether a test took it or not (every
    such test skipped or deselected), nothing is left behind."""
    # A scratch root the server account can enter (pytest's tmp_path may not be), so the
    # cluster lives in it rather than in a fallback directory.
    scratch = Path(tempfile.gettempdir()) / f"hokmdb-scratch-prestart-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HOKMDB_SCRATCH_DIR", str(scratch))
    pytester.makepyfile(PRESTART_TESTS)
    args = ["-p", "no:cacheprovider"] + ([] if taken else ["-k", "not takes"])
    try:
        result = pytester.runpytest_subprocess(*args)
        result.assert_outcomes(passed=2 if taken else 1, skipped=1, deselected=0 if taken else 1)
        assert [p.name for p in scratch.iterdir()] == ["ports"], list(scratch.iterdir())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


ASYNC_USER_SUITE = """
import asyncio

import pytest
import pytest_asyncio


@pytest_asyncio.fixture(scope="module")
async def shared():
    return id(asyncio.get_running_loop())


@pytest.mark.asyncio(loop_scope="module")
async def test_one(shared):
    assert shared == id(asyncio.get_running_loop())
"""


@pytest.mark.parametrize("plugin", ["hokmdb", "no:hokmdb"])
def test_a_users_async_suite_without_a_loop_scope_runs_as_before_and_quietly(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, plugin: str) -> None:
    """A project that never set ``asyncio_default_fixture_loop_scope``: pytest-asyncio warns
    at start-up wherever deprecation warnings show (``PYTHONWARNINGS=default``, a ``-W``, an
    in-process pytester run), and ``-W error`` makes that a crash. With hokmdb installed it
    must not warn, and the loops stay as they were (a module fixture shares the module's loop).
    ``no:hokmdb`` proves the warning is real without the plugin, so the first case fails if
    the plugin stops setting the value."""
    monkeypatch.setenv("PYTHONWARNINGS", "default")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(ASYNC_USER_SUITE)
    result = pytester.runpytest_subprocess("-p", plugin)
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    if plugin == "hokmdb":
        assert "is unset" not in output
        result.stdout.fnmatch_lines(["*asyncio_default_fixture_loop_scope=fixture-scope*"])
    else:
        assert 'PytestDeprecationWarning: The configuration option "asyncio_default_fixture_loop_scope" is unset.' in output


def test_a_loop_scope_the_user_set_is_kept(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("import pytest\n\n\n@pytest.mark.asyncio\nasync def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "hokmdb")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*asyncio_default_fixture_loop_scope=function*"])


def test_the_header_names_the_hokmdb_version(pytester: pytest.Pytester) -> None:
    from pytest_hokmdb import __version__

    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines([f"hokmdb {__version__} (pytest-hokmdb, Python *)"])


def test_hokmdb_version(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pytest_hokmdb import __version__

    done = subprocess.run([str(Path(sys.executable).parent / "hokmdb"), "--version"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"hokmdb {__version__} (pytest-hokmdb, Python ")
    from importlib.metadata import version

    assert version("pytest-hokmdb") == __version__  # one source: the package's metadata is read from it

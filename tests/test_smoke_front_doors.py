"""The smoke suite through every front door: `pytest smoke/`, `database/smoke_tests.py`
and the `DatabaseSmokeTests` API, against a healthy target and a broken one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg
from helpers import PROJECT_ROOT, LiveTarget

from pytest_hokmdb.api import DatabaseSmokeTests
from pytest_hokmdb.checks.catalog import groups
from pytest_hokmdb.config import load_config
from pytest_hokmdb.gate import run_gate
from pytest_hokmdb.migrate import adowngrade

SCRIPT = PROJECT_ROOT / "database" / "smoke_tests.py"
GROUPS = groups(PROJECT_ROOT)
ALL_CHECKS = {fn.spec.name for checks in GROUPS.values() for fn in checks}  # type: ignore[attr-defined]


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "COLUMNS": "200"},
        timeout=180,
    )


def test_healthy_database_passes_every_check_and_json_covers_them(live_target: LiveTarget, tmp_path: Path) -> None:
    loaded = load_config("testing", live_target.config_dir)
    result = run_gate(loaded, "smoke")
    failures = [t for t in result.tests if t["outcome"] in ("failed", "error")]
    assert result.passed, f"unexpected failures: {failures}\n{result.output[-3000:]}"
    recorded = {t["check"] for t in result.tests}
    assert recorded == ALL_CHECKS, f"checks without a smoke test: {ALL_CHECKS - recorded}"
    for test in result.tests:
        assert test["status"] in ("passed", "skipped")
        assert test["message"], test
        assert test["duration_s"] >= 0
    skipped = {t["check"]: t["message"] for t in result.tests if t["status"] == "skipped"}
    assert all(reason for reason in skipped.values())
    passed = {t["check"]: t["message"] for t in result.tests if t["status"] == "passed"}
    assert "no replicas attached, none expected" in passed["health.replication"]
    # Every blocker/critical check looked: the monitoring connection let them.
    assert all(t.get("verified", True) for t in result.tests)
    assert result.document["environment"] == "testing"
    assert live_target.password not in json.dumps(result.document)


async def test_a_database_behind_head_fails_exactly_the_revision_check(live_target: LiveTarget) -> None:
    await adowngrade(live_target.db.url, "0007")  # type: ignore[attr-defined]
    loaded = load_config("testing", live_target.config_dir)
    result = run_gate(loaded, "smoke", extra_args=["-k", "schema or connection"])
    failed = {t["check"]: t["message"] for t in result.tests if t["outcome"] == "failed"}
    assert result.exit_code == 1
    assert set(failed) >= {"schema.at_expected_revision"}
    assert "0007" in failed["schema.at_expected_revision"] and "0008" in failed["schema.at_expected_revision"]
    assert not [t for t in result.tests if t["check"] and t["check"].startswith("connection.") and t["outcome"] != "passed"]


def test_smoke_script_prints_a_table_writes_json_and_exits_0(live_target: LiveTarget, tmp_path: Path) -> None:
    output = tmp_path / "out" / "smoke.json"
    output.parent.mkdir()
    proc = _script("--environment", "testing", f"--db-config={live_target.config_dir}", "--output", str(output), "-k", "connection or security")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "connection.tls" in proc.stdout and "security.app_role_not_superuser" in proc.stdout
    assert "result: PASSED" in proc.stdout
    document = json.loads(output.read_text())
    assert {t["check"] for t in document["tests"]} >= {"connection.connect_time", "connection.latency"}
    assert live_target.password not in proc.stdout + proc.stderr + output.read_text()


async def test_smoke_script_exits_1_naming_the_failed_check(live_target: LiveTarget) -> None:
    conn = await asyncpg.connect(live_target.db.dsn)  # type: ignore[attr-defined]
    try:
        await conn.execute(f'ALTER ROLE "{live_target.role}" SUPERUSER')
    finally:
        await conn.close()
    proc = _script("--environment", "testing", f"--db-config={live_target.config_dir}", "-k", "security")
    assert proc.returncode == 1
    assert "security.app_role_not_superuser" in proc.stdout
    assert live_target.role in proc.stdout and "superuser" in proc.stdout
    assert "result: FAILED" in proc.stdout


def test_smoke_script_unreachable_host_exits_3_with_one_line(live_target: LiveTarget) -> None:
    proc = _script("--environment", "testing", f"--db-config={live_target.config_dir}", env={"DB_PORT": "1"})
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: cannot connect to postgresql://")
    assert ":***@" in proc.stderr and "connection refused" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert live_target.password not in proc.stderr


def test_pytest_on_an_unreachable_target_stops_once_with_exit_3(live_target: LiveTarget) -> None:
    """``pytest smoke/`` used to print one error per check, each message twice ("During
    handling of the above exception"): 357 lines for one refused port. Now it stops the
    session with the message once and the scripts' exit code."""
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "smoke/", "--environment=testing", f"--db-config={live_target.config_dir}",
         "-p", "no:cacheprovider", "-q"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, env={**os.environ, "DB_PORT": "1"}, timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    assert output.count("cannot connect to postgresql://") == 1, output
    assert "connection refused" in output and "hint: is the server running on that host and port?" in output
    assert "During handling" not in output and "Traceback" not in output, output
    assert len(output.strip().splitlines()) <= 6, output
    assert live_target.password not in output


def test_pytest_under_xdist_on_an_unreachable_target_stops_with_exit_3_and_no_internal_error(live_target: LiveTarget) -> None:
    """Under ``-n 2`` the same stop was a worker crash: an INTERNALERROR traceback from xdist's
    controller. Now each worker fails its first test with the message alone and the run ends
    with code 3."""
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "smoke/", "--environment=testing", f"--db-config={live_target.config_dir}",
         "-p", "no:cacheprovider", "-q", "-n", "2"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, env={**os.environ, "DB_PORT": "1"}, timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    assert "INTERNALERROR" not in output and "Traceback" not in output and "During handling" not in output, output
    assert "Interrupted: hokmdb: cannot connect to postgresql://" in output and "connection refused" in output
    errors = output.count("ERROR at setup of")  # the first test of each worker, and no other
    assert errors in (1, 2), output
    assert "2 errors" in output or "1 error" in output, output
    assert live_target.password not in output


def test_smoke_script_bad_config_exits_2(tmp_path: Path) -> None:
    proc = _script("--environment", "staging", f"--db-config={tmp_path}")
    assert proc.returncode == 2
    assert "staging.json does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_api_returns_result_dicts_backed_by_the_same_checks(live_target: LiveTarget) -> None:
    smoke = DatabaseSmokeTests("testing", config_path=live_target.config_dir)
    connection = await smoke.test_basic_connection()
    assert connection["passed"] and connection["status"] == "passed"
    assert [c["check"] for c in connection["checks"]] == [fn.spec.name for fn in GROUPS["connection"]]  # type: ignore[attr-defined]
    pool = await smoke.test_connection_pool()
    assert pool["passed"], pool["failures"]
    conn = await asyncpg.connect(live_target.db.dsn)  # type: ignore[attr-defined]
    try:
        await conn.execute(f'ALTER ROLE "{live_target.role}" CREATEROLE')
    finally:
        await conn.close()
    security = await smoke.test_security_config()
    assert not security["passed"] and security["status"] == "failed"
    assert any(f"{live_target.role} has CREATEROLE" in message for message in security["failures"])
    performance = await smoke.test_performance_baseline()
    assert performance["passed"], performance["failures"]


async def test_allure_results_carry_labels_and_redacted_evidence(live_target: LiveTarget, tmp_path: Path) -> None:
    await adowngrade(live_target.db.url, "0007")  # type: ignore[attr-defined]
    alluredir = tmp_path / "allure"
    loaded = load_config("testing", live_target.config_dir)
    result = run_gate(loaded, "smoke", extra_args=["-k", "schema or connection", f"--alluredir={alluredir}"])
    assert result.exit_code == 1
    documents = [json.loads(p.read_text()) for p in alluredir.glob("*-result.json")]
    by_title = {d["name"]: d for d in documents}
    revision = by_title["Database is at the expected schema revision"]
    assert by_title["Connects within the timeout"]["status"] == "passed"
    labels = {(label["name"], label["value"]) for label in revision["labels"]}
    assert ("feature", "Schema") in labels and ("tag", "schema drift") in labels
    assert any(name == "severity" for name, _ in labels)
    assert revision["status"] == "failed" and "0007" in revision["statusDetails"]["message"]
    attachments = [alluredir / a["source"] for a in revision.get("attachments", [])]
    assert attachments, "the failing check attaches its evidence"
    everything = "".join(p.read_text(errors="replace") for p in alluredir.iterdir())
    assert live_target.password not in everything


async def test_an_expired_app_role_is_reported_as_expired_with_the_fix(live_target: LiveTarget) -> None:
    """Issue 32 item 13: PostgreSQL tells a client whose password is past VALID UNTIL only
    "password authentication failed"; hokmdb said "check database.password", sending the
    operator after a password that is right. The monitoring connection reads pg_roles."""
    conn = await asyncpg.connect(live_target.db.dsn)  # type: ignore[attr-defined]
    try:
        await conn.execute(f"ALTER ROLE \"{live_target.role}\" VALID UNTIL '2000-01-01 00:00:00+00'")
    finally:
        await conn.close()
    proc = _script("--environment", "testing", f"--db-config={live_target.config_dir}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert (f"the password of role '{live_target.role}' expired on 2000-01-01 00:00 UTC (VALID UNTIL is in the past); "
            "PostgreSQL refuses it at login") in proc.stderr, proc.stderr
    assert (f"hint: run ALTER ROLE \"{live_target.role}\" VALID UNTIL 'infinity' (as a superuser or a role with "
            "CREATEROLE), or rotate the password and set a new expiry") in proc.stderr, proc.stderr
    assert "check database.password" not in proc.stderr
    assert "Traceback" not in proc.stderr and live_target.password not in proc.stderr


def test_a_wrong_password_is_not_called_expired(live_target: LiveTarget) -> None:
    proc = _script("--environment", "testing", f"--db-config={live_target.config_dir}", env={"DB_PASSWORD_TEST": "wrong"})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"password authentication failed for user '{live_target.role}'" in proc.stderr
    assert "hint: check database.password in" in proc.stderr and "expired" not in proc.stderr

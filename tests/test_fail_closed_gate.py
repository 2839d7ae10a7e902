"""The gate fails closed, through the front doors operators use: a dropped application table
fails the integrity checks (it does not make them skip), a blocker check that cannot look
fails the gate naming the fix, and a waiver with a reason lets it pass with the waiver shown
in the table, the JSON result and the Allure results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from helpers import PROJECT_ROOT, LiveTarget, write_config_dir

SCRIPT = PROJECT_ROOT / "database" / "smoke_tests.py"
REASON = "managed server: pg_hba is the provider's, reviewed in OPS-12"


def _script(live: LiveTarget, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--environment", "testing", f"--db-config={live.config_dir}", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {}), "COLUMNS": "250"}, timeout=180, check=False,
    )


async def test_a_dropped_application_table_fails_the_integrity_checks(live_target: LiveTarget, tmp_path: Path) -> None:
    conn = await asyncpg.connect(live_target.db.dsn)  # type: ignore[attr-defined]
    try:
        await conn.execute("DROP TABLE moves CASCADE")
    finally:
        await conn.close()
    output = tmp_path / "smoke.json"
    proc = _script(live_target, "-k", "integrity", "--output", str(output))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    document = json.loads(output.read_text())
    failed = {t["check"]: t["message"] for t in document["tests"] if t["status"] == "failed"}
    skipped = [t["check"] for t in document["tests"] if t["status"] == "skipped"]
    assert failed, "no integrity check failed although moves is gone"
    assert not skipped, f"checks skipped instead of failing: {skipped}"
    assert any('relation "moves" does not exist' in m and "the application's schema is missing" in m for m in failed.values()), failed


def test_a_blocker_that_cannot_look_fails_the_gate_and_a_waiver_lets_it_pass_visibly(live_target: LiveTarget, tmp_path: Path) -> None:
    no_monitor = {"DB_MONITOR_USER": "", "DB_MONITOR_PASSWORD_TEST": ""}
    proc = _script(live_target, "-k", "no_remote_trust_auth", env=no_monitor)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not verified" in proc.stdout and "security.no_remote_trust_auth" in proc.stdout
    assert "configure the monitoring connection" in " ".join(proc.stdout.split())

    write_config_dir(live_target.config_dir, "testing", smoke__waivers={"security.no_remote_trust_auth": {"reason": REASON}})
    output, allure_dir = tmp_path / "smoke.json", tmp_path / "allure"
    proc = _script(live_target, "-k", "no_remote_trust_auth", "--output", str(output), f"--alluredir={allure_dir}", env=no_monitor)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "waived" in flat and f"waived: security.no_remote_trust_auth ({REASON})" in flat
    document = json.loads(output.read_text())
    assert document["waivers"] == [{"check": "security.no_remote_trust_auth", "reason": REASON}]
    entry = next(t for t in document["tests"] if t["check"] == "security.no_remote_trust_auth")
    assert entry["waiver"] == {"reason": REASON} and entry["verified"] is False
    results = [json.loads(p.read_text()) for p in allure_dir.glob("*-result.json")]
    waived = [r for r in results if any(label["name"] == "tag" and label["value"] == "waived" for label in r["labels"])]
    assert waived and any(label == {"name": "waiver", "value": REASON} for label in waived[0]["labels"])


def test_a_waiver_for_an_unknown_check_is_a_configuration_error(live_target: LiveTarget) -> None:
    write_config_dir(live_target.config_dir, "testing", smoke__waivers={"security.no_such_check": {"reason": REASON}})
    proc = _script(live_target, "-k", "connection")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "smoke.waivers.security.no_such_check: no such check" in proc.stdout + proc.stderr
    write_config_dir(live_target.config_dir, "testing", smoke__waivers={"security.no_remote_trust_auth": {"reason": ""}})
    proc = _script(live_target, "-k", "connection")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "smoke.waivers" in proc.stderr and "reason" in proc.stderr

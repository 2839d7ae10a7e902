"""``hokmdb runbook daily`` against a live testing environment: the morning checklist exits 1
naming what needs a person (no backup yet; later a database behind the code), and 0 when
every step that looked found nothing, with one table and a JSON result (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from backup_support import BackupSetup
from helpers import PROJECT_ROOT

from pytest_hokmdb.backup import take_backup
from pytest_hokmdb.migrate import adowngrade

HOKMDB = Path(sys.executable).parent / "hokmdb"


def _daily(setup: BackupSetup, result: Path) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    proc = subprocess.run([str(HOKMDB), "runbook", "daily", "--environment", "testing", "--config", str(setup.config_dir),
                           "--json", str(result)], capture_output=True, text=True, env={**os.environ, **setup.env},
                          timeout=300, check=False, cwd=PROJECT_ROOT)
    return proc, json.loads(result.read_text())


def _row(document: dict, step: str) -> dict:  # type: ignore[type-arg]
    return next(r for r in document["rows"] if r["step"] == step)


async def test_the_daily_runbook_says_what_needs_a_person_and_all_clear_otherwise(backup_setup: BackupSetup, tmp_path: Path) -> None:
    config = backup_setup.config_dir / "testing.json"
    data = json.loads(config.read_text())
    data["backup"] = {**data.get("backup", {}), "max_age_h": 26}
    config.write_text(json.dumps(data))

    first, document = _daily(backup_setup, tmp_path / "first.json")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "hokmdb runbook daily: NEEDS A PERSON" in first.stdout
    assert document["needs_person"] is True
    assert _row(document, "smoke")["status"] == "ok", _row(document, "smoke")
    assert _row(document, "backup")["status"] == "attention"
    assert "no backup at all (backup.max_age_h = 26)" in _row(document, "backup")["detail"]

    await take_backup(backup_setup.loaded(), verify="quick")
    clear, document = _daily(backup_setup, tmp_path / "clear.json")
    assert clear.returncode == 0, clear.stdout + clear.stderr
    assert "hokmdb runbook daily: all clear" in clear.stdout
    assert document["needs_person"] is False
    assert _row(document, "backup")["status"] == "ok" and "verified (quick passed)" in _row(document, "backup")["detail"]
    assert backup_setup.live.password not in clear.stdout + clear.stderr + (tmp_path / "clear.json").read_text()

    await adowngrade(backup_setup.live.db.url, "-1")  # the database falls behind the code
    behind, document = _daily(backup_setup, tmp_path / "behind.json")
    assert behind.returncode == 1, behind.stdout + behind.stderr
    assert _row(document, "smoke")["status"] == "attention"
    assert "schema.at_expected_revision" in _row(document, "smoke")["detail"]
    assert "python database/smoke_tests.py --environment testing" in _row(document, "smoke")["detail"]


async def test_the_weekly_runbook_analyzes_stale_tables_as_the_owner_and_reports_duplicate_indexes(live_target, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import asyncpg
    from helpers import run_statements

    db = live_target.db
    await run_statements(db, "ALTER TABLE players SET (autovacuum_enabled = false)",  # so the stale statistics stay stale
                         # past autovacuum's analyze threshold (50 rows + 10 %) on the small seeded table
                         "UPDATE players SET rating = rating", "UPDATE players SET rating = rating",
                         "CREATE INDEX ix_players_rating_again ON players (rating DESC)")  # a copy of ix_players_rating_desc

    def weekly(env: dict[str, str], name: str) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
        result = tmp_path / name
        proc = subprocess.run([str(HOKMDB), "runbook", "weekly", "--environment", "testing", "--config",
                               str(live_target.config_dir), "--json", str(result)], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=300, check=False, cwd=PROJECT_ROOT)
        return proc, json.loads(result.read_text())

    conn = await asyncpg.connect(db.dsn)
    try:  # statistics reach pg_stat_user_tables asynchronously
        for _ in range(50):
            if await conn.fetchval("SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'players'"):
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    as_app, document = weekly(live_target.env, "app.json")  # the application role owns no table
    assert as_app.returncode == 1, as_app.stdout + as_app.stderr
    assert "does not own public.players" in _row(document, "analyze")["detail"]
    owner = {**live_target.env, "DB_OWNER_USER": "postgres", "DB_OWNER_PASSWORD_TEST": db.cluster.superuser_password}
    as_owner, document = weekly(owner, "owner.json")
    assert as_owner.returncode == 1, as_owner.stdout + as_owner.stderr  # the duplicate index needs a person
    analyze = _row(document, "analyze")
    assert analyze["status"] == "ok" and "analyzed public.players" in analyze["detail"]
    duplicates = _row(document, "duplicate indexes")
    assert duplicates["status"] == "attention"
    assert "public.players: ix_players_rating_again = ix_players_rating_desc" in duplicates["detail"]
    assert db.cluster.superuser_password not in as_owner.stdout + as_owner.stderr
    conn = await asyncpg.connect(db.dsn)
    try:
        assert await conn.fetchval("SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'players'") == 0
    finally:
        await conn.close()

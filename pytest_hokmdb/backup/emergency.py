"""``rollback.py emergency``: back to the newest verified backup, fast, and say so loudly.

1. choose the newest backup whose verification passed (before anything else, so the
   last-state backup taken next can never be chosen);
2. if the database still answers, take a last backup of its current state (unverified:
   speed matters; a failure is logged and does not stop the emergency);
3. restore and swap (row counts and amcheck on the copy before the swap);
4. validate the swapped-in database with the smoke suite;
5. send a critical alert with the operator's reason, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_hokmdb.backup.records import find_backup
from pytest_hokmdb.backup.restore import RestoreResult, restore_and_swap
from pytest_hokmdb.backup.take import take_backup
from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db import connect, resolve_target
from pytest_hokmdb.errors import HokmdbError

log = logging.getLogger("hokmdb.backup")


@dataclass
class EmergencyResult:
    ok: bool
    reason: str
    backup_id: str | None = None
    last_state_backup: str | None = None
    restore: RestoreResult | None = None
    smoke_passed: bool | None = None
    problems: list[str] = field(default_factory=list)
    alert_problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["restore"] = self.restore.to_dict() if self.restore else None
        return data


async def _answers(loaded: LoadedConfig) -> bool:
    try:
        target = await resolve_target(loaded, start=False)
        conn = await connect(replace(target, connect_timeout_s=min(target.connect_timeout_s, 5.0)))
    except HokmdbError as exc:
        log.warning("the database does not answer (%s): no last-state backup", exc.message)
        return False
    try:
        await conn.fetchval("SELECT 1")
        return True
    except Exception as exc:  # noqa: BLE001
        log.warning("the database does not answer (%s): no last-state backup", exc)
        return False
    finally:
        await conn.close()


async def emergency(loaded: LoadedConfig, reason: str, *, show_progress: bool | None = None) -> EmergencyResult:
    from pytest_hokmdb.gate import run_gate

    started = time.monotonic()
    environment = loaded.config.environment
    result = EmergencyResult(ok=False, reason=reason)
    log.warning("EMERGENCY rollback of %s: %s", environment, reason)
    try:
        chosen = find_backup(loaded, "latest-verified")
        result.backup_id = chosen.id
        log.info("newest verified backup: %s from %s (%s)", chosen.id, chosen.manifest.get("started_at"), chosen.verified_label())
        if await _answers(loaded):
            try:
                last = await take_backup(loaded, reason=f"emergency last state: {reason}", verify="none", show_progress=show_progress)
                result.last_state_backup = last.id
            except HokmdbError as exc:
                result.problems.append(f"last-state backup failed: {exc.message}")
                log.error("last-state backup failed (continuing): %s", exc.message)
        result.restore = await restore_and_swap(loaded, chosen.location, smoke_before_swap=False, show_progress=show_progress)
        extra = [f"--target-revision={chosen.revision}"] if chosen.revision else []
        gate = await asyncio.to_thread(run_gate, loaded, "smoke", extra_args=extra, timeout_s=loaded.config.deploy.gate_timeout_s)
        result.smoke_passed = gate.passed
        if not gate.passed:
            failed = [f"{t.get('check') or t['nodeid']}" for t in gate.tests if t.get("outcome") in ("failed", "error")]
            result.problems.append("smoke suite failed after the restore: " + (", ".join(failed) or gate.output[-500:]))
        result.ok = gate.passed
    except HokmdbError as exc:
        result.problems.append(exc.message)
        log.error("emergency rollback failed: %s", exc.message)
    result.duration_s = round(time.monotonic() - started, 3)
    result.alert_problems = await _alert(loaded, result)
    return result


async def _alert(loaded: LoadedConfig, result: EmergencyResult) -> list[str]:
    try:
        from pytest_hokmdb.notify import Notification, send
    except ImportError as exc:
        log.error("no alert sent: pytest_hokmdb.notify is not available (%s)", exc)
        return [f"notify unavailable: {exc}"]
    environment = loaded.config.environment
    outcome = "restored and validated" if result.ok else "FAILED"
    fields = {
        "reason": result.reason,
        "backup": result.backup_id or "-",
        "last-state backup": result.last_state_backup or "-",
        "previous database kept as": (result.restore.previous_database if result.restore else None) or "-",
        "smoke": {True: "passed", False: "failed", None: "not run"}[result.smoke_passed],
        "duration": f"{result.duration_s:.1f}s",
    }
    text = f"Emergency rollback of {environment}: {outcome}. Reason: {result.reason}."
    if result.problems:
        text += " Problems: " + "; ".join(result.problems)[:1500]
    note = Notification(
        event="emergency_rollback",
        environment=environment,
        title=f"EMERGENCY rollback of {environment} {outcome}",
        text=text,
        severity="critical",
        fields=fields,
    )
    problems = await send(loaded.config, note)
    for problem in problems:
        log.error("alert: %s", problem)
    return list(problems)

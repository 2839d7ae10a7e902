"""Smoke runs, deploys, backups and restores as Prometheus metrics, for the monitoring operators already run.

Built from the same document as the JSON result (one source), with prometheus-client: a
textfile for node_exporter's textfile collector (written by the library, atomically) and a
push to a Pushgateway grouped by job and environment, so each environment's last run
replaces its previous one. Per check: its status as a one-hot state set (passed, failed,
skipped, waived, not verified), its measured value and threshold when they are numbers, its
duration; per run: passed, the counts, duration and the time it finished.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.config.model import MetricsSettings
from pytest_hokmdb.redaction import redact

STATUSES = ("passed", "failed", "skipped", "waived", "not_verified")


def _status(test: dict[str, Any]) -> str:
    if test.get("waiver"):
        return "waived"
    if test.get("verified") is False:
        return "not_verified"
    outcome = test.get("outcome")
    return "failed" if outcome == "error" else str(outcome)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def smoke_registry(document: dict[str, Any]) -> CollectorRegistry:
    """The metrics of one smoke run (a JSON result document)."""
    registry = CollectorRegistry()
    environment = document.get("environment") or "none"
    check_labels = ["environment", "check"]
    status = Gauge("hokmdb_smoke_check_status", "1 for the check's status on the last smoke run (state set)",
                   [*check_labels, "status"], registry=registry)
    value = Gauge("hokmdb_smoke_check_value", "the value the check measured, when it is a number", check_labels,
                  registry=registry)
    threshold = Gauge("hokmdb_smoke_check_threshold", "the check's limit, when it is a number", check_labels,
                      registry=registry)
    duration = Gauge("hokmdb_smoke_check_duration_seconds", "how long the check took", check_labels, registry=registry)
    for test in document.get("tests", []):
        name = test.get("check") or test["nodeid"].split("::")[-1]
        current = _status(test)
        for state in STATUSES:
            status.labels(environment, name, state).set(1 if state == current else 0)
        duration.labels(environment, name).set(float(test.get("duration_s") or 0))
        if (measured := _number(test.get("measured"))) is not None:
            value.labels(environment, name).set(measured)
        if (limit := _number(test.get("threshold"))) is not None:
            threshold.labels(environment, name).set(limit)
    run = ["environment"]
    Gauge("hokmdb_smoke_passed", "1 when the last smoke run passed (pytest exit status 0)", run,
          registry=registry).labels(environment).set(1 if document.get("exitstatus") == 0 else 0)
    Gauge("hokmdb_smoke_duration_seconds", "wall time of the last smoke run", run,
          registry=registry).labels(environment).set(float(document.get("duration_s") or 0))
    Gauge("hokmdb_smoke_last_run_timestamp_seconds", "when the last smoke run finished (Unix time)", run,
          registry=registry).labels(environment).set_to_current_time()
    counts = Gauge("hokmdb_smoke_checks", "checks of the last smoke run by outcome", [*run, "outcome"], registry=registry)
    for outcome, count in (document.get("summary") or {}).items():
        counts.labels(environment, outcome).set(count)
    return registry


# deploy.session.RESULTS' values, so every state of the set is present (0 or 1) whatever happened.
DEPLOY_RESULTS = ("succeeded", "failed", "refused", "rolled_back", "rollback_failed", "locked", "primary_changed",
                  "contract_waits", "backup_failed", "interrupted")


def deploy_registry(environment: str, *, result: str, exit_code: int, duration_s: float, revision: str | None,
                    longest_locks: dict[str, float]) -> CollectorRegistry:
    """The metrics of one deploy: its result (state set), exit code, duration, the revision the
    database ended at, and the longest time each table was held under a lock that blocks writes."""
    registry = CollectorRegistry()
    run = ["environment"]
    state = Gauge("hokmdb_deploy_result", "1 for the last deploy's result (state set)", [*run, "result"], registry=registry)
    for name in dict.fromkeys((*DEPLOY_RESULTS, result.replace(" ", "_"))):
        state.labels(environment, name).set(1 if name == result.replace(" ", "_") else 0)
    Gauge("hokmdb_deploy_exit_code", "exit code of the last deploy (README 'Exit codes')", run,
          registry=registry).labels(environment).set(exit_code)
    Gauge("hokmdb_deploy_duration_seconds", "wall time of the last deploy", run, registry=registry).labels(environment).set(duration_s)
    Gauge("hokmdb_deploy_last_run_timestamp_seconds", "when the last deploy finished (Unix time)", run,
          registry=registry).labels(environment).set_to_current_time()
    Gauge("hokmdb_deploy_revision_info", "1, labelled with the revision the database is at after the last deploy",
          [*run, "revision"], registry=registry).labels(environment, revision or "none").set(1)
    locks = Gauge("hokmdb_deploy_longest_lock_seconds", "longest time the last deploy held a table under a lock "
                  "that blocks writes", [*run, "table"], registry=registry)
    for table, seconds in longest_locks.items():
        locks.labels(environment, table).set(seconds)
    return registry


def backup_registry(environment: str, *, size_bytes: int, verified: bool, revision: str | None) -> CollectorRegistry:
    """The metrics of a backup just taken: when (so age = time() - this), its size, whether its
    verification passed and the revision it holds."""
    registry = CollectorRegistry()
    run = ["environment"]
    Gauge("hokmdb_backup_last_success_timestamp_seconds", "when the last backup was taken (Unix time)", run,
          registry=registry).labels(environment).set_to_current_time()
    Gauge("hokmdb_backup_last_size_bytes", "size of the last backup (encrypted)", run,
          registry=registry).labels(environment).set(size_bytes)
    Gauge("hokmdb_backup_last_verified", "1 when the last backup's verification passed", run,
          registry=registry).labels(environment).set(1 if verified else 0)
    Gauge("hokmdb_backup_revision_info", "1, labelled with the revision the last backup holds", [*run, "revision"],
          registry=registry).labels(environment, revision or "none").set(1)
    return registry


def restore_registry(environment: str, *, backup_id: str, duration_s: float, swapped: bool) -> CollectorRegistry:
    """The metrics of a restore that was verified (a swap, a dry run, or a backup's verification
    restore): when, how long, whether it was swapped in, and which backup."""
    registry = CollectorRegistry()
    run = ["environment"]
    Gauge("hokmdb_restore_last_verified_timestamp_seconds", "when a restore of a backup was last verified (Unix time)",
          run, registry=registry).labels(environment).set_to_current_time()
    Gauge("hokmdb_restore_last_duration_seconds", "how long that restore took", run,
          registry=registry).labels(environment).set(duration_s)
    Gauge("hokmdb_restore_last_swapped", "1 when that restore replaced the live database, 0 for a verification",
          run, registry=registry).labels(environment).set(1 if swapped else 0)
    Gauge("hokmdb_restore_backup_info", "1, labelled with the backup that restore verified", [*run, "backup"],
          registry=registry).labels(environment, backup_id).set(1)
    return registry


def export_configured(loaded: LoadedConfig, build: Callable[[], CollectorRegistry], *, name: str) -> list[str]:
    """Export where the environment's ``metrics`` section says (nothing when it says nowhere)."""
    settings = loaded.config.metrics
    if settings.textfile_dir is None and not settings.pushgateway_url:
        return []
    return [f"{problem} ({loaded.path})" for problem in export(build(), settings, loaded.config.environment, name=name)]


def export(registry: CollectorRegistry, settings: MetricsSettings, environment: str, *, name: str) -> list[str]:
    """Write and push as configured; the problems, each a sentence, for the caller to show.
    A metrics target that fails must not change a run's verdict, and must not pass silently."""
    problems: list[str] = []
    if settings.textfile_dir is not None:
        path = Path(settings.textfile_dir) / f"{name}_{environment}.prom"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(path), registry)
        except OSError as exc:
            problems.append(f"metrics.textfile_dir: cannot write {path}: {exc.strerror or exc}")
    if settings.pushgateway_url:
        try:
            # One group per environment and source: a deploy's push must not replace the smoke run's.
            push_to_gateway(settings.pushgateway_url, job=settings.job, registry=registry,
                            grouping_key={"environment": environment, "source": name.removeprefix("hokmdb_")},
                            timeout=settings.push_timeout_s)
        except OSError as exc:  # URLError and HTTPError are OSErrors
            problems.append(f"metrics.pushgateway_url: the push to {redact(settings.pushgateway_url)} failed: "
                            f"{redact(str(getattr(exc, 'reason', None) or exc))}")
    return problems

"""What a deploy was asked to do (the command line's options), and what follows from them
and the config: whether a backup is taken first, which suites gate it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_hokmdb.config import LoadedConfig

# Set to an environment's name by the CI job that holds that environment's deploy approval.
APPROVAL_ENV = "HOKMDB_DEPLOY_APPROVED"


@dataclass
class DeployOptions:
    environment: str
    config_path: str | None = None
    setup: bool = False
    target_revision: str = "head"
    dry_run: bool = False
    validate_config: bool = False
    backup_before_deploy: bool = False
    backup_retention_days: int | None = None
    skip_backup: bool = False
    run_smoke_tests: bool = False
    maintenance_mode: bool = False
    max_downtime_s: float | None = None
    force: bool = False
    expand_only: bool = False  # stop before the first contract revision of a transition
    approve: bool = False
    gate: bool = True  # the demo gates itself after seeding
    notify: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def recorded(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k not in ("extra", "config_path") and v not in (None, False)}


def backup_wanted(loaded: LoadedConfig, options: DeployOptions) -> tuple[bool, str]:
    if options.skip_backup:
        return False, "skipped (--skip-backup)"
    if options.backup_before_deploy:
        return True, "--backup-before-deploy"
    if loaded.config.backup.required_before_deploy:
        return True, f"backup.required_before_deploy in {loaded.path.name}"
    return False, "not requested and not required by the config"


def gate_suites(loaded: LoadedConfig, options: DeployOptions) -> list[str]:
    if not options.gate:
        return []
    suites = list(loaded.config.deploy.gate_suites)
    if options.run_smoke_tests and "smoke" not in suites:
        suites.insert(0, "smoke")
    return suites

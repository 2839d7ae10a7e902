"""A rehearsal of the `test migrations` job's database steps, run as written in the workflow
against a PostgreSQL the test starts (standing in for the service container): roles as on a
real server, migrate and seed as the superuser, then the smoke suite as the application role
with the monitoring role. It must pass, or the job would be red and nothing would deploy."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_ROOT

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.db.scratch import create_database, start_throwaway_cluster

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "database.yml"


@pytest.fixture
def service() -> Iterator[EmbeddedCluster]:
    cluster = start_throwaway_cluster("service")
    try:
        yield cluster
    finally:
        cluster.destroy()


def _steps() -> tuple[dict[str, str], list[dict[str, object]]]:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test-migrations"]
    wanted = [s for s in job["steps"] if str(s.get("name", "")).startswith(("Migrate the PostgreSQL", "Smoke suite against"))]
    assert len(wanted) == 2, "the job's migrate and smoke steps were renamed; update this rehearsal"
    return {k: str(v) for k, v in job["env"].items()}, wanted


def test_the_jobs_database_steps_pass_as_written(service: EmbeddedCluster, tmp_path: Path) -> None:
    db = create_database(service, "hokm_test_ci")
    # A checkout of links, so the steps' outputs (smoke-testing.json, allure-results/) land here.
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    for entry in (".venv", "scripts", "database", "smoke", "migrations", "pytest_hokmdb", "alembic.ini", "pyproject.toml",
                  "pytest.ini"):
        (workdir / entry).symlink_to(PROJECT_ROOT / entry)
    job_env, steps = _steps()
    # The service container's address and superuser become this cluster's.
    local = {"DB_HOST": service.host, "DB_PORT": str(service.port), "DB_NAME": db.name, "DB_USER": "postgres",
             "DB_PASSWORD_TEST": service.superuser_password}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "HOKMDB_ENVIRONMENT", "PG"))}
    base["HOKMDB_ENV_FILE"] = str(PROJECT_ROOT / "no-such.env")
    for step in steps:
        env = {**base, **job_env, **local, **{k: str(v) for k, v in dict(step.get("env") or {}).items()}}
        if "PGPASSWORD" in env:
            env["PGPASSWORD"] = service.superuser_password
        if env.get("DB_USER") != "postgres":  # the smoke step's own role, not the superuser's address
            env["DB_HOST"], env["DB_PORT"], env["DB_NAME"] = service.host, str(service.port), db.name
        proc = subprocess.run(["bash", "-e", "-c", str(step["run"])], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, f"step {step['name']!r} failed:\n{(proc.stdout + proc.stderr)[-5000:]}"
    assert service.superuser_password not in proc.stdout + proc.stderr
    assert '"passed"' in (workdir / "smoke-testing.json").read_text()

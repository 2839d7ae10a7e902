"""The GitHub Actions pipeline, checked as GitHub and a reviewer would: valid against the
workflow schema, clean under zizmor, jobs gated in the documented order, actions pinned,
secrets only through the environment, and every command it runs really exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_ROOT

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "database.yml"
BIN = Path(sys.executable).parent


def _load() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is a test dependency (pip install -e '.[test]')"
    return found


def test_validates_against_the_github_workflow_schema() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_at_high_severity() -> None:
    result = subprocess.run(
        [_tool("zizmor"), "--offline", "--format", "json", "--min-severity", "high", str(WORKFLOW)],
        capture_output=True, text=True, timeout=120,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)[:4000]


def test_job_graph_follows_the_documented_order() -> None:
    jobs = _load()["jobs"]
    needs = {name: set([job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])) for name, job in jobs.items()}
    assert needs["validate"] == set()
    assert needs["security-scan"] == {"validate"}
    assert needs["test-migrations"] == {"validate"}
    assert needs["deploy-staging"] == {"security-scan", "test-migrations"}
    assert needs["smoke-staging"] == {"deploy-staging"}
    assert needs["rollback-staging"] == {"deploy-staging", "smoke-staging"}
    assert needs["deploy-production"] == {"smoke-staging"}
    assert needs["smoke-production"] == {"deploy-production"}
    assert needs["emergency-rollback-production"] == {"deploy-production", "smoke-production"}
    assert needs["notify"] >= {"validate", "deploy-staging", "deploy-production", "smoke-production"}
    assert "always()" in jobs["notify"]["if"]
    assert jobs["deploy-staging"]["environment"] == "staging"
    assert jobs["deploy-production"]["environment"] == "production"


def test_every_job_is_bounded_least_privileged_and_deploys_never_overlap() -> None:
    workflow = _load()
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 45, name
        assert job["permissions"] == {"contents": "read"}, name
    for name in ("deploy-staging", "deploy-production"):
        concurrency = workflow["jobs"][name]["concurrency"]
        assert concurrency["group"] == name and concurrency["cancel-in-progress"] is False


def test_actions_are_pinned_to_full_commit_shas() -> None:
    uses = re.findall(r"uses:\s*(\S+)", WORKFLOW.read_text())
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{ref} is not pinned to a commit"


def test_secrets_and_inputs_reach_commands_only_through_the_environment() -> None:
    for name, job in _load()["jobs"].items():
        for step in job["steps"]:
            run = step.get("run", "")
            assert "${{" not in run, f"{name}: expression expanded inside a shell script: {run!r}"


def test_dispatch_inputs_are_the_documented_ones() -> None:
    on = _load()[True]  # PyYAML reads the key `on` as boolean True
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"environment", "target_revision", "dry_run"}
    assert set(on["push"]["branches"]) == {"main", "staging"}
    assert set(on["pull_request"]["branches"]) == {"main", "staging"}


def _commands() -> list[str]:
    commands = []
    for job in _load()["jobs"].values():
        for step in job["steps"]:
            commands += [line.strip() for line in step.get("run", "").splitlines() if line.strip()]
    return commands


@pytest.mark.parametrize(
    "script",
    ["database/deploy.py", "database/smoke_tests.py", "database/rollback.py", "database/seed_data.py"],
)
def test_scripts_the_pipeline_runs_exist(script: str) -> None:
    if not any(script in command for command in _commands()):
        pytest.skip(f"the pipeline does not run {script}")
    assert (PROJECT_ROOT / script).is_file(), f"the pipeline runs {script}, which does not exist"


def test_flags_the_pipeline_passes_are_accepted() -> None:
    """Every --flag in the workflow exists in the --help of the command it is passed to."""
    commands = {
        "database/deploy.py": [sys.executable, "database/deploy.py", "--help"],
        "database/smoke_tests.py": [sys.executable, "database/smoke_tests.py", "--help"],
        "database/seed_data.py": [sys.executable, "database/seed_data.py", "--help"],
        "rollback.py emergency": [sys.executable, "database/rollback.py", "emergency", "--help"],
        "hokmdb config": [str(BIN / "hokmdb"), "config", "--help"],
        "hokmdb notify": [str(BIN / "hokmdb"), "notify", "--help"],
    }
    for key, help_cmd in commands.items():
        uses = [c for c in _commands() if key in c or (key.startswith("database/") and key in c)]
        if not uses:
            continue
        result = subprocess.run(help_cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{' '.join(help_cmd)} failed: {result.stderr[-2000:]}"
        flags = {flag for command in uses for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", command)}
        missing = [flag for flag in sorted(flags) if flag not in result.stdout]
        assert not missing, f"{key} does not accept {missing}"

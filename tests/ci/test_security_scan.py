"""The workflow's own scan commands, run here exactly as its jobs run them (read out of the
workflow, so they cannot drift): a red scan is caught by `make test`, not first in GitHub,
where it would skip every deploy after it. Also: the lock file pins, with hashes, every
dependency pyproject.toml declares."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_ROOT

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "database.yml"
LOCK = PROJECT_ROOT / "requirements" / "dev.txt"  # what the test and CI jobs install
RUNTIME_LOCK = PROJECT_ROOT / "requirements" / "runtime.txt"
BIN = Path(sys.executable).parent
ADVISORY_PROBE = "https://pypi.org/pypi/pip/json"


def _step_command(job: str, name_prefix: str) -> list[str]:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"][job]["steps"]
    runs = [s["run"] for s in steps if s.get("name", "").startswith(name_prefix)]
    assert len(runs) == 1, f"the {job} job has no single step named {name_prefix!r}"
    argv = shlex.split(runs[0])
    # The workflow runs the venv's tools (.venv/bin/X): here, the interpreter's own venv.
    return [str(BIN / Path(argv[0]).name) if argv[0].startswith(".venv/bin/") else argv[0], *argv[1:]]


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(("job", "step"), [
    ("security-scan", "bandit"),
    ("security-scan", "Workflow static analysis"),
    ("validate", "Lint (ruff)"),
])
def test_the_workflow_scan_passes_here(job: str, step: str) -> None:
    argv = _step_command(job, step)
    proc = _run(argv)
    assert proc.returncode == 0, f"`{shlex.join(argv)}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"


def _advisory_service_reachable() -> str | None:
    try:
        with urllib.request.urlopen(ADVISORY_PROBE, timeout=5) as response:  # noqa: S310 - a fixed https URL
            response.read(64)
        return None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return str(exc)


def test_the_dependency_audit_passes_where_the_advisory_service_answers() -> None:
    unreachable = _advisory_service_reachable()
    if unreachable:
        pytest.skip(f"pip-audit needs PyPI's advisory service ({ADVISORY_PROBE}), unreachable from here: {unreachable}; "
                    "the workflow's security-scan job runs it")
    argv = _step_command("security-scan", "Dependency vulnerability audit")
    proc = _run(argv)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{shlex.join(argv)}` exited {proc.returncode}:\n{output[-4000:]}"
    installed = len(re.findall(r"^\S+==", LOCK.read_text(), flags=re.M))
    unaudited = len(re.findall(r"could not be audited", output))
    if unaudited >= installed:
        # Exit 0 over nothing is not a pass: the service answered for none of these versions.
        pytest.skip(f"pip-audit ran, but the advisory service knows none of the {unaudited} installed versions "
                    "(this machine installs from a mirror); the workflow's security-scan job audits them on PyPI")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


@pytest.mark.parametrize("lock", [LOCK, RUNTIME_LOCK], ids=["dev", "runtime"])
def test_the_lock_pins_every_declared_dependency_with_hashes(lock: Path) -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    if lock == LOCK:
        declared |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    declared |= {_name(r) for r in tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]}
    text = lock.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M))
    locked = {name.lower().replace("_", "-").replace(".", "-") for name in pins}
    assert not declared - locked, f"declared in pyproject.toml but not in {lock.name}: {sorted(declared - locked)} (run `make lock`)"
    for block in re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 1)[1]):
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, f"{block.split()[0]} is pinned without a hash"

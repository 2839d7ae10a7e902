"""The gate: run a pytest suite as a subprocess and read its verdict from the JSON result.

Scripts orchestrate, pytest decides: deploy.py, smoke_tests.py and the demo all call
this instead of re-implementing checks, so what gates a deploy is exactly what an
operator runs by hand with ``pytest smoke/ --environment NAME``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.redaction import redact


@dataclass(frozen=True)
class GateResult:
    exit_code: int
    document: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def tests(self) -> list[dict[str, Any]]:
        return list(self.document.get("tests", []))

    @property
    def summary(self) -> dict[str, int]:
        return dict(self.document.get("summary", {}))


def run_gate(
    loaded: LoadedConfig,
    suite: str = "smoke",
    *,
    extra_args: list[str] | None = None,
    json_path: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> GateResult:
    """Run ``pytest <suite>/ --environment E`` in a child process; return its exit code and JSON."""
    root = loaded.project_root
    with tempfile.TemporaryDirectory(prefix="hokmdb-gate-") as tmp:
        result_path = json_path or Path(tmp) / "result.json"
        cmd = [
            sys.executable, "-m", "pytest", str(root / suite),
            f"--environment={loaded.config.environment}",
            f"--db-config={loaded.path}",
            f"--hokmdb-json={result_path}",
            f"--rootdir={root}",
            "-p", "no:cacheprovider",
            "-q",
            *(extra_args or []),
        ]
        child_env = {**os.environ, **(env or {})}
        child_env.pop("PYTEST_ADDOPTS", None)
        child_env.pop("PYTEST_XDIST_WORKER", None)
        try:
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=child_env, timeout=timeout_s)
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, output = 124, f"the {suite} suite did not finish within {timeout_s:g}s\n{exc.stdout or ''}"
        document: dict[str, Any] = {}
        if result_path.is_file():
            document = json.loads(result_path.read_text())
    return GateResult(exit_code=code, document=document, output=redact(output))

"""squawk, the PostgreSQL migration linter, run on a revision's offline SQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pytest_hokmdb.migration.lint.findings import (
    LintError,
)


def find_squawk() -> Path:
    """The squawk binary: ``HOKMDB_SQUAWK`` when set (a squawk installed elsewhere), else next
    to this interpreter (``pip install squawk-cli`` in a venv puts it there, and it may not be
    on PATH when the venv is not activated), else on PATH."""
    chosen = os.environ.get("HOKMDB_SQUAWK", "").strip()
    if chosen:
        path = Path(chosen)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise LintError(
            f"squawk is not installed at HOKMDB_SQUAWK={chosen} (no executable file there), so revisions cannot be linted",
            hint=f"point HOKMDB_SQUAWK at the squawk binary, or unset it to use the one `{sys.executable} -m pip install squawk-cli` installs",
        )
    candidates = [Path(sys.executable).parent / "squawk", Path(sys.prefix) / "bin" / "squawk"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("squawk")
    if found:
        return Path(found)
    raise LintError(
        "squawk is not installed, so revisions cannot be linted",
        hint=f"{sys.executable} -m pip install squawk-cli",
    )


def _run_squawk(squawk: Path, sql: str, filename: str, cwd: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        # Superseded rules are dropped afterwards rather than passed as --exclude, so that an
        # exclusion list in the project's .squawk.toml is not overridden.
        [str(squawk), "--reporter", "json", "--stdin-filepath", filename],
        check=False,  # exit 1 means findings; judged below
        input=sql,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    # Exit 0: clean, 1: findings; anything else (or output that is not JSON) is squawk failing.
    out = proc.stdout.strip()
    if proc.returncode in (0, 1) and (out.startswith("[") or not out):
        try:
            data = json.loads(out) if out else []
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list):
            return data
    raise LintError(
        f"squawk failed on {filename} (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:2000]}"
    )


def _squawk_message(item: dict[str, Any]) -> tuple[str, str | None]:
    """squawk 2.x has ``message``/``help``; 1.x had ``messages: [{Note: ...}, {Help: ...}]``."""
    if "message" in item:
        return str(item["message"]), item.get("help")
    notes, helps = [], []
    for entry in item.get("messages") or []:
        if isinstance(entry, dict):
            notes += [str(v) for k, v in entry.items() if k.lower() != "help"]
            helps += [str(v) for k, v in entry.items() if k.lower() == "help"]
    return ("; ".join(notes) or str(item.get("rule_name")), "; ".join(helps) or None)

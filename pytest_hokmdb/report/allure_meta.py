"""What the plugin adds to an Allure results directory besides the test results.

``environment.properties`` tells a report reader which database the run was about;
``categories.json`` sorts failures into the buckets operators triage by. Checks append
``[category: ...]`` to their failure message (see ``fixtures/checks.py``), because Allure
categories can only match on message text and status, not on labels.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pytest_hokmdb.redaction import redact

CATEGORY_MARK = "[category: {name}]"
# Order matters: Allure puts a result in the first category that matches.
CATEGORIES: tuple[tuple[str, str, list[str]], ...] = (
    ("Schema drift", "schema drift", ["failed"]),
    ("Security", "security", ["failed"]),
    ("Performance regression", "performance regression", ["failed"]),
    ("Data integrity", "data integrity", ["failed"]),
    ("Infrastructure and connection problems", "infrastructure", ["failed", "broken"]),
)
# Errors outside any check (fixtures that could not connect, timeouts) are infrastructure too.
_INFRASTRUCTURE_TEXT = r"[\s\S]*(cannot connect to|statement timeout|connection refused|embedded cluster)[\s\S]*"


def category_mark(category: str) -> str:
    return CATEGORY_MARK.format(name=category)


def categories_document() -> list[dict[str, object]]:
    document: list[dict[str, object]] = []
    for title, category, statuses in CATEGORIES:
        mark = category_mark(category).replace("[", r"\[").replace("]", r"\]")
        document.append({"name": title, "matchedStatuses": statuses, "messageRegex": rf"[\s\S]*{mark}[\s\S]*"})
    document.append(
        {"name": "Infrastructure and connection problems", "matchedStatuses": ["failed", "broken"], "messageRegex": _INFRASTRUCTURE_TEXT}
    )
    return document


def git_commit(root: Path) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def write_allure_metadata(alluredir: Path, properties: dict[str, str]) -> None:
    """Write ``environment.properties`` and ``categories.json`` (values redacted)."""
    alluredir.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}={redact(str(value)).replace(chr(10), ' ')}" for key, value in properties.items()]
    (alluredir / "environment.properties").write_text("\n".join(lines) + "\n")
    (alluredir / "categories.json").write_text(json.dumps(categories_document(), indent=2))

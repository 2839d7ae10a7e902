"""The deploy's pre-flight drift check: does the live schema match the schema of the
revision it claims? The comparison itself is ``pytest_hokmdb.migration.reference``; here,
when no reference database can be built, the models stand in (only valid at their head).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from alembic.script import ScriptDirectory

from pytest_hokmdb.db.target import Target
from pytest_hokmdb.migration.reference import DriftResult
from pytest_hokmdb.migration.reference import check_drift as _compare

__all__ = ["DriftResult", "check_drift"]


async def check_drift(target: Target, project_root: Path, script: ScriptDirectory, revision: str | None) -> DriftResult:
    """The reference comparison, with the models as fallback at the head."""

    async def fallback(why: str) -> DriftResult:
        assert revision is not None
        return await _models_fallback(target, project_root, script, revision, why)

    return await _compare(target, project_root, script, revision, fallback=fallback)


async def _models_fallback(target: Target, project_root: Path, script: ScriptDirectory, revision: str, why: str) -> DriftResult:
    from pytest_hokmdb.checks.schema import app_schema, diff_shapes, expected_shape, live_shape
    from pytest_hokmdb.db.connect import connect
    from pytest_hokmdb.errors import ConfigError
    from pytest_hokmdb.migration.settings import load_settings

    try:
        metadata = load_settings(project_root).load_metadata()
    except ConfigError as exc:
        return DriftResult(False, reason=f"{why}; and the models cannot stand in: {exc.message}")
    if metadata is None:
        return DriftResult(False, reason=f"{why}; and the project has no models (metadata = false) to compare with")
    heads = script.get_heads()
    if heads != [revision]:
        return DriftResult(False, reason=f"{why}; the models describe only the head ({', '.join(heads)}), not {revision}")
    conn = await connect(replace(target, read_only=True))
    try:
        expected = expected_shape(metadata)
        live = await live_shape(conn, await app_schema(conn), expected.enums.keys())
    finally:
        await conn.close()
    return DriftResult(True, diff_shapes(expected, live), reference=f"the models ({why})")

"""Alembic bound to a hokmdb target: one way in for the plugin, the scripts and the tests.

The URL (with its password) is passed to env.py in memory through ``Config.attributes``;
nothing secret is written to alembic.ini or shown in alembic's output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from pytest_hokmdb.config.loader import find_project_root
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import ConfigError

if TYPE_CHECKING:
    import asyncpg

Bindable = Target | URL | str


def alembic_config(bind: Bindable | None = None, *, project_root: Path | None = None) -> Config:
    root = project_root or find_project_root()
    ini = root / "alembic.ini"
    if not ini.is_file():
        raise ConfigError(f"alembic configuration {ini} does not exist", hint="run from the project checkout")
    cfg = Config(str(ini))
    cfg.attributes["hokmdb_programmatic"] = True
    if isinstance(bind, Target):
        cfg.attributes["hokmdb_target"] = bind
    elif bind is not None:
        cfg.attributes["hokmdb_url"] = bind
    return cfg


def script_directory(cfg: Config | None = None) -> ScriptDirectory:
    return ScriptDirectory.from_config(cfg or alembic_config())


def head_revision(cfg: Config | None = None) -> str:
    heads = script_directory(cfg).get_heads()
    if len(heads) != 1:
        raise ConfigError(f"the migration history has {len(heads)} heads ({', '.join(heads)}); merge them first")
    return heads[0]


def upgrade(bind: Bindable, revision: str = "head", *, project_root: Path | None = None) -> None:
    command.upgrade(alembic_config(bind, project_root=project_root), revision)


def downgrade(bind: Bindable, revision: str, *, project_root: Path | None = None) -> None:
    command.downgrade(alembic_config(bind, project_root=project_root), revision)


async def current_revision(conn: asyncpg.Connection) -> str | None:
    """The revision recorded in ``alembic_version`` (None when the table is missing or empty)."""
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    rows = await conn.fetch("SELECT version_num FROM alembic_version")
    if len(rows) > 1:
        return ",".join(sorted(r["version_num"] for r in rows))
    return rows[0]["version_num"] if rows else None


async def aupgrade(bind: Bindable, revision: str = "head", *, project_root: Path | None = None) -> None:
    """``upgrade`` without blocking the running event loop."""
    await asyncio.to_thread(upgrade, bind, revision, project_root=project_root)


async def adowngrade(bind: Bindable, revision: str, *, project_root: Path | None = None) -> None:
    await asyncio.to_thread(downgrade, bind, revision, project_root=project_root)


def resolve_in(script: ScriptDirectory, revision: str) -> str:
    """``revision`` (an id or a unique prefix) as the full id of a revision of ``script``."""
    try:
        found = script.get_revision(revision)
    except Exception as exc:  # noqa: BLE001 - alembic's errors say "no such revision"/"ambiguous"
        raise ConfigError(f"revision {revision!r} is not in this code's migration history: {exc}",
                          hint="`alembic history` lists the revisions; use one of them, or head") from None
    if found is None:
        raise ConfigError(f"revision {revision!r} is not in this code's migration history",
                          hint="`alembic history` lists the revisions; use one of them, or head")
    return str(found.revision)


def check_revision(revision: str | None, *, project_root: Path | None = None) -> None:
    """Reject a revision this code does not have before any connection, lock or log file
    (deploy, rollback, smoke): bad input is a usage error (exit 2), not a failed run."""
    if revision is None or revision in ("head", "heads", "base"):
        return
    resolve_in(ScriptDirectory.from_config(alembic_config(project_root=project_root)), revision)

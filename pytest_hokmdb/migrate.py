"""Alembic bound to a hokmdb target: one way in for the plugin, the scripts and the tests.

The target reaches env.py in memory, both ways an env.py may look for it: ``Config.attributes``
(this project's env.py, and ``attributes["connection"]`` for a caller that hands over a
connection) and the ``sqlalchemy.url`` main option (what a stock ``alembic init`` env.py
reads). Nothing secret is written to alembic.ini or shown in alembic's output. And whatever
env.py does, alembic runs a migration only on the database it was given: before the first
step, the connection env.py configured is asked which database and port it reached
(``require_bound``), and anything else stops the command with nothing migrated.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, make_url

from pytest_hokmdb.config.loader import find_project_root
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import ConfigError

if TYPE_CHECKING:
    import asyncpg

Bindable = Target | URL | str


@functools.cache
def installed_postgresql_driver() -> str:
    """The SQLAlchemy driver name of the first PostgreSQL driver installed: psycopg, psycopg2,
    else asyncpg (hokmdb's own). A bare ``postgresql://`` means psycopg under SQLAlchemy 2.1
    (psycopg2 before), which a project may not have."""
    for module, name in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return name
    return "postgresql+asyncpg"


def bound_url(bind: Bindable) -> URL:
    """``bind`` as a SQLAlchemy URL (with its password)."""
    if isinstance(bind, Target):
        return URL.create("postgresql", bind.user, bind.password, bind.host, bind.port, bind.dbname)
    return make_url(bind) if isinstance(bind, str) else bind


def url_for_env(url: URL, configured: str | None) -> str:
    """``sqlalchemy.url`` for an env.py that builds its own engine: ``url`` with the driver the
    project configured (its env.py is written for it; sync or async), else the first
    PostgreSQL driver installed."""
    driver = None
    if configured:
        try:
            driver = make_url(configured).drivername
        except Exception:  # noqa: BLE001 - an interpolated or placeholder URL: choose a driver below
            driver = None
    if not driver or not driver.startswith("postgresql"):
        driver = installed_postgresql_driver()
    return url.set(drivername=driver).render_as_string(hide_password=False)


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
    if bind is not None:
        url = bound_url(bind)
        cfg.attributes["hokmdb_bound"] = (url.database, url.port or 5432)
        # In memory only (Config never writes its ini back); "%" is the ini's interpolation.
        cfg.set_main_option("sqlalchemy.url", url_for_env(url, cfg.get_main_option("sqlalchemy.url")).replace("%", "%%"))
    return cfg


def require_bound(cfg: Config, context: Any) -> None:
    """Stop before the first step unless env.py configured alembic on the database it was
    given (``alembic_config(bind)``): asked of the server, so no spelling of a host or a
    driver can fool it. A stock env.py that ignores hokmdb's target and reads another URL
    ends here, with nothing migrated."""
    expected = cfg.attributes.get("hokmdb_bound")
    connection = getattr(context, "connection", None)
    if expected is None or connection is None:
        return
    handed = cfg.attributes.get("connection")
    if handed is not None and connection is handed:
        return
    if cfg.attributes.get("hokmdb_require_handover"):
        raise ConfigError(
            f"{Path(cfg.get_main_option('script_location') or 'migrations') / 'env.py'} configured alembic on a "
            "connection of its own, not on the one the deploy handed it in config.attributes['connection']: the "
            "deploy's lock_timeout, statement_timeout and lock monitor would not apply, so nothing was migrated",
            hint="in env.py, use config.attributes['connection'] when it is set (alembic's cookbook: \"Sharing a "
                 "Connection across one or more programmatic migration commands\")",
        )
    row = connection.exec_driver_sql("SELECT current_database(), current_setting('port')::int").first()
    reached = (row[0], int(row[1])) if row is not None else (None, None)
    if reached != (expected[0], int(expected[1])):
        raise ConfigError(
            f"{Path(cfg.get_main_option('script_location') or 'migrations') / 'env.py'} connected to database "
            f"{reached[0]} on port {reached[1]}, not to {expected[0]} on port {expected[1]}, the database hokmdb gave "
            "it: nothing was migrated",
            hint="in env.py, use config.attributes['connection'] when it is set, else build the engine from "
                 "config.get_main_option('sqlalchemy.url') (hokmdb sets both in memory); a URL of env.py's own, or "
                 "one read from the environment, reaches whatever it names",
        )


def run_alembic(cfg: Config, direction: str, destination: str) -> None:
    """``alembic upgrade/downgrade destination`` as alembic.command runs it, with
    ``require_bound`` before the first step."""
    script = ScriptDirectory.from_config(cfg)

    def steps(rev: Any, context: Any) -> Any:
        require_bound(cfg, context)
        if direction == "upgrade":
            return script._upgrade_revs(destination, rev)  # noqa: SLF001 - what alembic.command.upgrade runs
        return script._downgrade_revs(destination, rev)  # noqa: SLF001 - what alembic.command.downgrade runs

    with EnvironmentContext(cfg, script, fn=steps, as_sql=False, starting_rev=None, destination_rev=destination, tag=None):
        script.run_env()


def script_directory(cfg: Config | None = None) -> ScriptDirectory:
    return ScriptDirectory.from_config(cfg or alembic_config())


def head_revision(cfg: Config | None = None) -> str:
    heads = script_directory(cfg).get_heads()
    if len(heads) != 1:
        raise ConfigError(f"the migration history has {len(heads)} heads ({', '.join(heads)}); merge them first")
    return heads[0]


def upgrade(bind: Bindable, revision: str = "head", *, project_root: Path | None = None) -> None:
    run_alembic(alembic_config(bind, project_root=project_root), "upgrade", revision)


def downgrade(bind: Bindable, revision: str, *, project_root: Path | None = None) -> None:
    run_alembic(alembic_config(bind, project_root=project_root), "downgrade", revision)


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

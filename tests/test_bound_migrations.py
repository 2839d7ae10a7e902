"""Alembic bound to the database hokmdb gives it, whatever env.py does (issue 33's critical
finding): a stock ``alembic init`` env.py reads ``sqlalchemy.url`` and migrated the user's real
database while a throwaway fixture passed on an empty one. ``pytest_hokmdb.migrate`` now puts
the target where a stock env.py looks too, and asks the connection env.py configured which
database it reached before the first step: anything else stops with nothing migrated."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from helpers import admin_fetchval

from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.db.scratch import create_database, drop_database
from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.migrate import alembic_config, run_alembic, upgrade

REVISION = '''"""Create items."""
from alembic import op
import sqlalchemy as sa

revision = "b1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("items")
'''


def _stock_project(root: Path, url: str, *, hardcoded: str | None = None) -> Path:
    """``alembic init`` (the sync template, psycopg), its ini pointing at ``url``; with
    ``hardcoded``, an env.py that builds its engine from a URL of its own."""
    project = root / f"shop-{uuid.uuid4().hex[:6]}"
    project.mkdir()
    command.init(Config(str(project / "alembic.ini")), str(project / "migrations"), template="generic")
    ini = (project / "alembic.ini").read_text().replace("driver://user:pass@localhost/dbname", url.replace("%", "%%"))
    (project / "alembic.ini").write_text(ini)
    if hardcoded is not None:
        env = project / "migrations" / "env.py"
        env.write_text(env.read_text().replace(
            'config.get_section(config.config_ini_section, {})', f'{{"sqlalchemy.url": {hardcoded!r}}}'))
    (project / "migrations" / "versions" / "b1_items.py").write_text(REVISION)
    return project


@pytest.fixture
def two_databases(hokmdb_cluster: EmbeddedCluster):  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    real, throwaway = create_database(hokmdb_cluster, f"shop_real_{suffix}"), create_database(hokmdb_cluster, f"shop_tmp_{suffix}")
    try:
        yield real, throwaway
    finally:
        drop_database(hokmdb_cluster, real.name)
        drop_database(hokmdb_cluster, throwaway.name)


def _url(db) -> str:  # type: ignore[no-untyped-def]
    return db.url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


async def _has_items(cluster: EmbeddedCluster, name: str) -> bool:
    return bool(await admin_fetchval(cluster, "SELECT to_regclass('items') IS NOT NULL", name))


async def test_a_stock_env_py_migrates_the_database_it_was_given_not_the_one_in_alembic_ini(two_databases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    real, throwaway = two_databases
    project = _stock_project(tmp_path, _url(real))
    assert "config.attributes" not in (project / "migrations" / "env.py").read_text()  # nothing of ours in it
    upgrade(throwaway.url, "head", project_root=project)
    assert await _has_items(throwaway.cluster, throwaway.name)
    assert not await _has_items(real.cluster, real.name), "the user's real database was migrated"
    assert "shop_real" in (project / "alembic.ini").read_text()  # the ini on disk is untouched


async def test_an_env_py_that_connects_elsewhere_is_stopped_before_the_first_step(two_databases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    real, throwaway = two_databases
    project = _stock_project(tmp_path, _url(throwaway), hardcoded=_url(real))
    with pytest.raises(ConfigError) as caught:
        upgrade(throwaway.url, "head", project_root=project)
    assert (f"env.py connected to database {real.name} on port {real.cluster.port}, not to {throwaway.name} on port "
            f"{throwaway.cluster.port}, the database hokmdb gave it: nothing was migrated") in caught.value.message
    assert not await _has_items(real.cluster, real.name)
    assert not await _has_items(throwaway.cluster, throwaway.name)


def test_the_deploy_refuses_an_env_py_that_ignores_the_connection_it_hands_over(two_databases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The deploy's lock_timeout, statement_timeout and lock monitor live on the connection it
    hands over; a stock env.py opens its own (even to the same database): nothing runs."""
    from sqlalchemy import create_engine

    _real, throwaway = two_databases
    project = _stock_project(tmp_path, _url(throwaway))
    engine = create_engine(_url(throwaway))
    try:
        with engine.connect() as handed:
            cfg = alembic_config(throwaway.url, project_root=project)
            cfg.attributes["connection"] = handed
            cfg.attributes["hokmdb_require_handover"] = True
            with pytest.raises(ConfigError, match="configured alembic on a connection of its own, not on the one the "
                                                  "deploy handed it in config.attributes\\['connection'\\]"):
                run_alembic(cfg, "upgrade", "head")
    finally:
        engine.dispose()

"""What the deploy tests share (imported by name, not through ``conftest``, which other test
directories also have): the deploy role, ``DeployEnv``, project copies with test-only
revisions (the real ``migrations/versions`` is never touched) and the test revisions."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, write_config_dir

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.cluster import EmbeddedCluster
from pytest_hokmdb.fixtures.throwaway import ThrowawayDatabase

DEPLOY_ROLE = "hokm_deployer"
DEPLOY_PASSWORD = "Dq4-deploy-secret-7Zp1"  # a known value, so tests can prove it never leaks
MONITOR_ROLE = "hokm_deploy_monitor"
MONITOR_PASSWORD = "Mn5-monitor-secret-3Qw8"
TEMPLATE = "hokmdb_deploy_template"
SCRIPT = PROJECT_ROOT / "database" / "deploy.py"
_names = itertools.count(1)


async def admin(cluster: EmbeddedCluster, sql: str, dbname: str = "postgres") -> None:
    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(dbname))  # type: ignore[arg-type]
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class DeployEnv:
    """A database and a ``testing`` config directory pointing at it, as the deploy role."""

    db: ThrowawayDatabase
    config_dir: Path
    env: dict[str, str]
    log_dir: Path
    monkeypatch: pytest.MonkeyPatch
    root: Path = PROJECT_ROOT

    @property
    def name(self) -> str:
        return self.db.name

    async def connect(self) -> asyncpg.Connection:
        """A superuser connection to the database, for the test's own probes."""
        return await asyncpg.connect(self.db.dsn)

    async def fetchval(self, sql: str, *args: object) -> object:
        conn = await self.connect()
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def revision(self) -> str | None:
        return await self.fetchval("SELECT max(version_num) FROM alembic_version")  # type: ignore[return-value]

    def write_config(self, **overrides: object) -> None:
        defaults: dict[str, object] = {
            "deploy__lock_wait_s": 2.0,
            "deploy__log_dir": str(self.log_dir),
            "deploy__lock_retry_budget_s": 3.0,
            "deploy__lock_retry_base_delay_s": 0.1,
            "database__lock_timeout_ms": 300,
            "notifications__notify_on_failure": False,
        }
        write_config_dir(self.config_dir, "testing", **{**defaults, **overrides})

    def use_project(self, root: Path) -> None:
        self.root = root
        self.env["HOKMDB_PROJECT_ROOT"] = str(root)
        self.monkeypatch.setenv("HOKMDB_PROJECT_ROOT", str(root))

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``python database/deploy.py --environment testing --config DIR ...`` as a child process."""
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--environment", "testing", f"--config={self.config_dir}", *args],
            capture_output=True, text=True, env={**os.environ, **self.env}, timeout=timeout, check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), "--environment", "testing", f"--config={self.config_dir}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **self.env},
        )


def new_database(cluster: EmbeddedCluster, template: str | None) -> ThrowawayDatabase:
    name = f"d_{os.getpid()}_{next(_names)}"
    clause = f" TEMPLATE {template}" if template else ""
    run_sync(admin(cluster, f"CREATE DATABASE {name}{clause} OWNER {DEPLOY_ROLE}"))
    if template is None:
        run_sync(admin(cluster, f"ALTER SCHEMA public OWNER TO {DEPLOY_ROLE}", name))
        # Catalog-view grants are per database: the monitoring role's come with a template only.
        for grant in ("GRANT SELECT ON pg_catalog.pg_hba_file_rules TO {r}", "GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO {r}"):
            run_sync(admin(cluster, grant.format(r=MONITOR_ROLE), name))
    return ThrowawayDatabase(name, cluster)


# -- the deploy role's template and environments


def build_deploy_template(hokmdb_cluster: EmbeddedCluster) -> str:
    """The deploy role, the monitoring role and a seeded template at head on ``hokmdb_cluster``."""
    from sqlalchemy.engine import URL

    from hokm_profile.seed import seed
    from pytest_hokmdb.migrate import upgrade

    run_sync(admin(hokmdb_cluster, f"CREATE ROLE {DEPLOY_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{DEPLOY_PASSWORD}'"))
    run_sync(admin(hokmdb_cluster, f"GRANT pg_monitor TO {DEPLOY_ROLE}"))
    run_sync(admin(hokmdb_cluster, f"CREATE DATABASE {TEMPLATE} OWNER {DEPLOY_ROLE}"))
    run_sync(admin(hokmdb_cluster, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))  # in postgres, as provision() does
    # The monitoring role the gate uses, as an operator sets it up (grants copy with the template).
    run_sync(_monitor(hokmdb_cluster))
    run_sync(admin(hokmdb_cluster, f"ALTER SCHEMA public OWNER TO {DEPLOY_ROLE}", TEMPLATE))
    url = URL.create("postgresql+asyncpg", DEPLOY_ROLE, DEPLOY_PASSWORD, hokmdb_cluster.host, hokmdb_cluster.port, TEMPLATE)
    upgrade(url, "head")

    async def fill() -> None:
        conn = await asyncpg.connect(user=DEPLOY_ROLE, password=DEPLOY_PASSWORD, host=hokmdb_cluster.host, port=hokmdb_cluster.port, database=TEMPLATE)
        try:
            await seed(conn, players=40, games=60, random_seed=11, clear=False)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    run_sync(fill())
    run_sync(admin(hokmdb_cluster, f"ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"))
    return TEMPLATE


async def _monitor(cluster: EmbeddedCluster) -> None:
    from pytest_hokmdb.db.resolve import provision_monitor

    conn = await asyncpg.connect(**cluster.admin_connect_kwargs(TEMPLATE))  # type: ignore[arg-type]
    try:
        await provision_monitor(conn, user=MONITOR_ROLE, password=MONITOR_PASSWORD)
    finally:
        await conn.close()


def make_deploy_env(hokmdb_cluster: EmbeddedCluster, template: str | None, base: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch, snapshot_cache: Path, **overrides: object) -> DeployEnv:
    """A database from ``template`` on ``hokmdb_cluster`` and a testing config pointing at it, as the deploy role."""
    db = new_database(hokmdb_cluster, template)
    env = {
        "DB_HOST": hokmdb_cluster.host,
        "DB_PORT": str(hokmdb_cluster.port),
        "DB_NAME": db.name,
        "DB_USER": DEPLOY_ROLE,
        "DB_PASSWORD_TEST": DEPLOY_PASSWORD,
        "DB_MONITOR_USER": MONITOR_ROLE,
        "DB_MONITOR_PASSWORD_TEST": MONITOR_PASSWORD,
        "HOKMDB_ENV_FILE": str(tmp_path / "no-such.env"),
        "HOKMDB_CACHE_DIR": str(snapshot_cache),
        "HOKMDB_DEPLOY_ACTOR": "tester",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HOKMDB_PROJECT_ROOT", raising=False)
    monkeypatch.delenv("HOKMDB_DEPLOY_APPROVED", raising=False)
    deploy_env = DeployEnv(db, base / "config", env, base / "logs", monkeypatch)
    deploy_env.write_config(**overrides)
    return deploy_env


# -- copies of the project with extra revisions ---------------------------------------------------

_COPIED = ("alembic.ini", "pyproject.toml", "pytest.ini", "migrations", "smoke", "database/config")

REVISION_TEMPLATE = '''"""{doc}

Revision ID: {rev}
Revises: {down}
Create Date: 2026-11-24
"""

import os

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None

hokmdb_lint_waivers = {{
    "require-lock-timeout": "the deploy tool sets lock_timeout on every session it migrates with",
    "lock-timeout-not-reset": "test revision, nothing runs after it in the same session",
}}


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def make_project(base: Path, revisions: list[tuple[str, str, str, str]], *, lint_default: str | None = "warning") -> Path:
    """A copy of the project whose history continues with ``revisions``: (id, doc, upgrade body, downgrade body).

    The copy's lint policy defaults to ``warning`` so that these tests do not depend on the
    policy of the real project (``lint_default=None`` keeps it; the lint test sets ``error``).
    """
    root = base / f"project-{uuid.uuid4().hex[:6]}"
    for item in _COPIED:
        source = PROJECT_ROOT / item
        dest = root / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest)
    down = "0008"
    for rev, doc, up, downgrade in revisions:
        body = REVISION_TEMPLATE.format(
            doc=doc, rev=rev, down=down, upgrade=textwrap.indent(textwrap.dedent(up).strip(), "    "),
            downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
        )
        (root / "migrations" / "versions" / f"{rev}_test.py").write_text(body)
        down = rev
    if lint_default is not None:
        pyproject = root / "pyproject.toml"
        text = pyproject.read_text()
        pyproject.write_text(text.replace('default = "error"', f'default = "{lint_default}"', 1))
        assert f'default = "{lint_default}"' in pyproject.read_text()
    return root


def add_revision(root: Path, spec: tuple[str, str, str, str], down: str) -> Path:
    """Append one more test revision (id, doc, upgrade body, downgrade body) to a project copy."""
    rev, doc, up, downgrade = spec
    body = REVISION_TEMPLATE.format(
        doc=doc, rev=rev, down=down, upgrade=textwrap.indent(textwrap.dedent(up).strip(), "    "),
        downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
    )
    path = root / "migrations" / "versions" / f"{rev}_test.py"
    path.write_text(body)
    return path


# Test revisions (upgrade body, downgrade body). All but the gate breaker leave the schema as
# the models describe it, so the gate passes after them.
COMMENT_0009 = (
    "0009", "Comment on players (a visible, model-neutral change).",
    "op.execute(\"COMMENT ON TABLE players IS 'probe 0009'\")",
    "op.execute('COMMENT ON TABLE players IS NULL')",
)
SLOW_0010 = (
    "0010", "Comment on game_sessions, then sleep HOKMDB_TEST_SLEEP_S seconds inside the revision's transaction.",
    """
    op.execute("COMMENT ON TABLE game_sessions IS 'probe 0010'")
    op.execute(f"SELECT pg_sleep({float(os.environ.get('HOKMDB_TEST_SLEEP_S', '0'))})")
    """,
    "op.execute('COMMENT ON TABLE game_sessions IS NULL')",
)

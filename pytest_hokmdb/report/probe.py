"""A quick, harmless look at a target's server: what the report header and the Allure
metadata show. Never starts the embedded cluster and never waits longer than a few seconds."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db.connect import connect
from pytest_hokmdb.db.resolve import embedded_cluster_for, local_patroni_for, resolve_target
from pytest_hokmdb.errors import HokmdbError
from pytest_hokmdb.redaction import redact


@dataclass(frozen=True)
class ServerFacts:
    target: str  # redacted DSN, or where the embedded cluster lives
    version: str | None = None
    revision: str | None = None  # alembic revision; None when unreachable, "none" without alembic_version
    problem: str | None = None  # why version/revision are missing

    def describe(self) -> str:
        if self.problem:
            return redact(f"target {self.target}, {self.problem}")
        return redact(f"target {self.target}, PostgreSQL {self.version}, revision {self.revision}")


async def probe_server(
    loaded: LoadedConfig, *, database: str | None = None, port: int | None = None, timeout_s: float = 3.0
) -> ServerFacts:
    """Version and alembic revision of the session's target (``database`` and ``port`` override)."""
    from pytest_hokmdb.migrate import current_revision

    try:
        if loaded.config.uses_embedded and local_patroni_for(loaded) is None:  # the Patroni mode names its leader
            status = embedded_cluster_for(loaded).status()
            if not status.running:
                return ServerFacts(f"embedded cluster ({status.data_dir})", problem="not running: started on first use")
        target = await resolve_target(loaded, start=False)
    except HokmdbError as exc:
        return ServerFacts("unavailable", problem=exc.message)
    if database:
        target = target.with_database(database)
    if port:
        target = replace(target, port=port)
    try:
        conn = await connect(replace(target, connect_timeout_s=min(target.connect_timeout_s, timeout_s)))
    except HokmdbError as exc:
        return ServerFacts(target.dsn(), problem=f"server unreachable: {exc.message}")
    try:
        version = await conn.fetchval("SHOW server_version")
        revision = await current_revision(conn) or "none"
    finally:
        await conn.close()
    return ServerFacts(target.dsn(), version=str(version), revision=revision)

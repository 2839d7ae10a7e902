"""Where an environment's standbys and PgBouncer are, and how to read PgBouncer's pools.

A ``Topology`` is resolved once per run from ``topology`` in the environment's config: the
real endpoints listed there, or, for ``topology.local``, the standby and PgBouncer that
hokmdb runs beside the embedded cluster (``cluster/topology.py``), or, for ``topology.local:
"patroni"``, the replicas Patroni lists, the PgBouncer in front of the leader and Patroni's
REST API (``cluster/patroni_topology.py``). Standbys are reached as the
monitoring role (physical replicas have the primary's roles); PgBouncer's admin console as
its configured stats user, through ``psql`` because the console speaks only the simple query
protocol (asyncpg always uses the extended one).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import HokmdbError
from pytest_hokmdb.redaction import redact, register_secret

if TYPE_CHECKING:
    from pytest_hokmdb.cluster.patroni_topology import LocalPatroniTopology
    from pytest_hokmdb.cluster.topology import LocalTopology

# Unit separator: never inside a pool name or a number.
_FIELD_SEP = "\x1f"


@dataclass(frozen=True)
class PoolerEndpoint:
    host: str
    port: int
    user: str
    password: str | None = field(default=None, repr=False)
    database: str = ""

    def __post_init__(self) -> None:
        register_secret(self.password)

    def describe(self) -> str:
        return f"PgBouncer at {self.host}:{self.port}"


@dataclass(frozen=True)
class Topology:
    """The environment's standbys (as monitoring-role targets) and its PgBouncer, if any.
    ``problem`` says why a configured component could not be resolved (checks fail on it)."""

    configured: bool = False
    standbys: tuple[Target, ...] = ()
    standby_names: tuple[str | None, ...] = ()
    pooler: PoolerEndpoint | None = None
    # PgBouncer's admin console as a role in its admin_users (PAUSE/RESUME); the configured
    # admin_user, or the local topology's superuser.
    pooler_admin: PoolerEndpoint | None = None
    problem: str | None = None
    patroni_rest_urls: tuple[str, ...] = ()
    patroni_expected_members: int = 0
    replay_timeout_s: float = 60.0
    max_slot_retained_bytes: int = 1024 * 1024 * 1024
    max_pool_wait_s: float = 1.0
    synchronous_replication: bool = False

    @property
    def expected_standbys(self) -> int:
        return len(self.standbys) if self.problem is None else max(len(self.standbys), 1)


def resolve_topology(loaded: LoadedConfig, target: Target, monitor: Target | None) -> Topology:
    """The topology of ``loaded``'s environment; an empty one when it has no ``topology``."""
    settings = loaded.config.topology
    if settings is None:
        return Topology()
    limits = dict(replay_timeout_s=settings.replay_timeout_s, max_slot_retained_bytes=settings.max_slot_retained_bytes,
                  max_pool_wait_s=settings.max_pool_wait_s, synchronous_replication=settings.synchronous_replication)
    observer = monitor or target
    if settings.local == "patroni":
        return _local_patroni(loaded, observer, target.dbname, limits)
    if settings.local:
        from pytest_hokmdb.cluster.topology import LocalTopology
        from pytest_hokmdb.db.resolve import embedded_cluster_for

        local = LocalTopology(embedded_cluster_for(loaded))
        status = local.status()
        if not (status.standby.initialized and status.pooler.port):
            return Topology(configured=True, problem=(
                f"the local topology of {loaded.config.environment} has not been set up "
                f"(run `hokmdb topology start --environment {loaded.config.environment}`)"), **limits)  # type: ignore[arg-type]
        return local_view(local, observer, target.dbname, **limits)  # type: ignore[arg-type]
    standbys = tuple(replace(observer, host=s.host, port=s.port, read_only=True) for s in settings.standbys)
    pooler = None
    if settings.pgbouncer is not None:
        b = settings.pgbouncer
        pooler = PoolerEndpoint(b.host, b.port, b.admin_user,
                                b.admin_password.get_secret_value() if b.admin_password else None,
                                b.database or loaded.config.database.name)
    patroni = settings.patroni
    return Topology(configured=True, standbys=standbys, standby_names=tuple(s.name for s in settings.standbys),
                    pooler=pooler, pooler_admin=pooler,
                    patroni_rest_urls=tuple(patroni.rest_urls) if patroni else (),
                    patroni_expected_members=patroni.expected_members if patroni else 0, **limits)  # type: ignore[arg-type]


def _local_patroni(loaded: LoadedConfig, observer: Target, dbname: str, limits: dict[str, float | int]) -> Topology:
    """The local Patroni topology's endpoints, or the problem that it was never started."""
    from pytest_hokmdb.db.resolve import local_patroni_for

    local = local_patroni_for(loaded)
    assert local is not None  # topology.local is "patroni" on an embedded environment (the config says so)
    environment = loaded.config.environment
    if not (local.created() and local.pooler.status().port):
        return Topology(configured=True, problem=(
            f"the local Patroni topology of {environment} has not been set up "
            f"(run `hokmdb topology start --environment {environment}`)"), **limits)  # type: ignore[arg-type]
    return _patroni_view(local, observer, dbname, **limits)


async def refresh_local_pooler(loaded: LoadedConfig, role: str) -> str | None:
    """After ``role``'s password changed: the PgBouncer hokmdb runs for the environment
    (``topology.local``) re-reads the roles' SCRAM verifiers, so the game logs in through it
    with the new password (its auth file held the old verifier). Returns what was done, for
    the operator; None when the environment has no local PgBouncer or it does not admit ``role``."""
    from pytest_hokmdb.db.resolve import local_patroni_for, local_topology_for

    patroni = local_patroni_for(loaded)
    light = local_topology_for(loaded) if patroni is None else None
    if patroni is not None:
        pooler, roles, superuser = patroni.pooler, patroni.pooler_roles, patroni.patroni
    elif light is not None:
        pooler, roles, superuser = light.pooler, light.pooler_roles, light.primary
    else:
        return None
    if role not in roles:
        return None
    environment = loaded.config.environment
    if pooler.status().port is None:
        return None  # never set up: `hokmdb topology start` writes its auth file when it first runs it
    try:
        reloaded = await pooler.refresh_auth(superuser.admin_connect_kwargs(), roles=roles)
    except HokmdbError as exc:
        return (f"PgBouncer of the local topology still has the old verifier ({exc.message}): run `hokmdb topology "
                f"start --environment {environment}` before the game logs in through it")
    if not reloaded:
        return f"PgBouncer of the local topology is not running; `hokmdb topology start --environment {environment}` gives it the new verifier"
    return f"PgBouncer on {pooler.host}:{pooler.port} reloaded with the new verifier"


def local_view(local: LocalTopology, observer: Target, dbname: str, **limits: float | int) -> Topology:
    """The endpoints of hokmdb's own topology, reached as ``observer`` (the monitoring role)."""
    from pytest_hokmdb.cluster.topology import POOLER_ADMIN, STANDBY_NAME

    standby = replace(observer, host="127.0.0.1", port=local.standby_port, read_only=True)
    pooler = PoolerEndpoint("127.0.0.1", local.pooler_port, observer.user, observer.password, dbname)
    admin = PoolerEndpoint("127.0.0.1", local.pooler_port, POOLER_ADMIN, local.primary.superuser_password, dbname)
    return Topology(configured=True, standbys=(standby,), standby_names=(STANDBY_NAME,), pooler=pooler,
                    pooler_admin=admin, **limits)  # type: ignore[arg-type]


def _patroni_view(local: LocalPatroniTopology, observer: Target, dbname: str, **limits: float | int) -> Topology:
    """Standbys are the members Patroni does not name leader (asked now: after a switchover the
    old leader is one), named as Patroni names them (its ``application_name`` on the leader);
    PgBouncer is the one in front of the leader; the Patroni check reads the local REST API."""
    from pytest_hokmdb.cluster.patroni_topology import POOLER_ADMIN

    members = local.patroni.members()
    patroni = dict(patroni_rest_urls=tuple(local.rest_urls), patroni_expected_members=local.expected_members)
    if members is None:
        return Topology(configured=True, problem=(
            f"the local Patroni topology in {local.base_dir} is not running: no member answers on its REST API "
            "(run `hokmdb topology start`)"), **patroni, **limits)  # type: ignore[arg-type]
    replicas = [m for m in members if m.role != "leader"]
    standbys = tuple(replace(observer, host=m.host, port=m.port, read_only=True) for m in replicas)
    pooler = PoolerEndpoint("127.0.0.1", local.pooler_port, observer.user, observer.password, dbname)
    admin = PoolerEndpoint("127.0.0.1", local.pooler_port, POOLER_ADMIN, local.patroni.superuser_password, dbname)
    return Topology(configured=True, standbys=standbys, standby_names=tuple(m.name for m in replicas), pooler=pooler,
                    pooler_admin=admin, **patroni, **limits)  # type: ignore[arg-type]


class PoolerError(HokmdbError):
    """PgBouncer's admin console could not be read."""


def _psql() -> str:
    found = shutil.which("psql")
    if found is None:
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True):
            return str(candidate)
        raise PoolerError("psql is not installed; it reads PgBouncer's admin console",
                          hint="install the PostgreSQL client (Debian: apt-get install postgresql-client)")
    return found


async def pooler_show(endpoint: PoolerEndpoint, what: str, *, timeout_s: float = 10.0) -> list[dict[str, str]]:
    """``SHOW <what>`` on PgBouncer's admin console, as rows of column -> text. The password
    goes through the environment, never the command line."""
    if what.upper() not in ("POOLS", "STATS", "CLIENTS", "SERVERS", "DATABASES", "CONFIG", "LISTS", "STATE"):
        raise ValueError(f"not a PgBouncer SHOW command: {what}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=endpoint.host, PGPORT=str(endpoint.port), PGUSER=endpoint.user, PGDATABASE="pgbouncer",
               PGCONNECT_TIMEOUT=str(max(1, int(timeout_s))), PGSSLMODE="prefer", PGAPPNAME="hokmdb-smoke")
    if endpoint.password:
        env["PGPASSWORD"] = endpoint.password
    proc = await asyncio.create_subprocess_exec(
        _psql(), "-X", "-A", "-q", "-w", "-F", _FIELD_SEP, "-P", "footer=off", "-c", f"SHOW {what.upper()}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        raise PoolerError(f"{endpoint.describe()} did not answer SHOW {what.upper()} within {timeout_s:g} s",
                          hint="check that PgBouncer runs and listens there") from None
    if proc.returncode != 0:
        reason = redact(err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
        raise PoolerError(f"{endpoint.describe()}: cannot read its admin console as {endpoint.user!r}: {reason}",
                          hint="list the role in PgBouncer's stats_users (or admin_users) and its auth file, and check "
                               "topology.pgbouncer's host, port and admin_user")
    lines = out.decode(errors="replace").splitlines()
    if not lines:
        return []
    header = lines[0].split(_FIELD_SEP)
    return [dict(zip(header, line.split(_FIELD_SEP), strict=False)) for line in lines[1:] if line]


async def pooler_command(endpoint: PoolerEndpoint, command: str, *, timeout_s: float) -> None:
    """PAUSE/RESUME (and the like) on PgBouncer's admin console. asyncpg's ``execute`` without
    arguments uses the simple query protocol, which the console accepts."""
    import asyncpg

    verb = command.split()[0].upper()
    if verb not in ("PAUSE", "RESUME", "RELOAD", "ENABLE", "DISABLE", "WAIT_CLOSE"):
        raise ValueError(f"not a PgBouncer admin command hokmdb sends: {command}")
    try:
        conn = await asyncpg.connect(host=endpoint.host, port=endpoint.port, user=endpoint.user, password=endpoint.password,
                                     database="pgbouncer", statement_cache_size=0, timeout=timeout_s, ssl="prefer")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise PoolerError(f"{endpoint.describe()}: cannot log into its admin console as {endpoint.user!r}: "
                          f"{redact(str(exc))}", hint="list the role in PgBouncer's admin_users and its auth file") from None
    try:
        await asyncio.wait_for(conn.execute(command), timeout_s)
    except TimeoutError:
        raise PoolerError(f"{endpoint.describe()}: {verb} did not finish within {timeout_s:g} s (transactions still "
                          "hold server connections)") from None
    except asyncpg.PostgresError as exc:
        raise PoolerError(f"{endpoint.describe()}: {command} failed: {redact(str(exc))}") from None
    finally:
        conn.terminate()

"""The high-availability topology on one machine: two Patroni-managed PostgreSQL nodes with a
one-node etcd (``cluster/patroni.py``) and PgBouncer in transaction mode in front of the
current leader (``cluster/pgbouncer.py``), all on loopback. ``hokmdb topology start`` runs it
for an environment whose config says ``"topology": {"local": "patroni"}``.

Everything lives in one directory (for an environment, ``<embedded cluster dir>-patroni``):
``etcd/``, ``node1/`` and ``node2/`` with their YAML and logs, ``pgbouncer/``, and a copy of
``pgbouncer_follow.py``. PgBouncer follows the leader: Patroni runs that copy (``on_start``,
``on_role_change``) on the node that becomes the leader, which rewrites PgBouncer's
``[databases]`` to that node's port and reloads it (SIGHUP, PgBouncer's ``RELOAD``). hokmdb
points it at the leader itself whenever it starts it, so a switchover while PgBouncer was
stopped is caught up too.

Roles and the database are provisioned by the layer above (``db/resolve.py``, the same code as
for the embedded cluster) between ``start_servers`` and ``refresh_pooler``: PgBouncer's auth
file holds the roles' SCRAM verifiers, so they must exist first.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_hokmdb.cluster import pgbouncer_follow
from pytest_hokmdb.cluster.patroni import NODES, LocalPatroni, Member
from pytest_hokmdb.cluster.pgbouncer import POOLER_ADMIN, PgBouncer, PoolerStatus  # noqa: F401 - part of this module's API
from pytest_hokmdb.errors import ClusterError

log = logging.getLogger(__name__)

FOLLOW_SCRIPT = "pgbouncer_follow.py"


def _patroni_python() -> str:
    """The interpreter Patroni itself runs with (its script's ``#!``), which the server's account
    can always run; the callback needs nothing else."""
    patroni = shutil.which("patroni") or "/usr/bin/patroni"
    try:
        first = Path(patroni).read_bytes()[:200].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return sys.executable
    if first.startswith("#!") and Path(first[2:].split()[0]).is_file():
        return first[2:].split()[0]
    return sys.executable


@dataclass(frozen=True)
class PatroniTopologyStatus:
    base_dir: Path
    created: bool
    processes: dict[str, int | None]
    members: tuple[Member, ...] | None
    pooler: PoolerStatus

    @property
    def leader(self) -> Member | None:
        return next((m for m in self.members or () if m.role == "leader" and m.state == "running"), None)

    @property
    def replicas(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members or () if m.role != "leader")

    @property
    def pooler_follows_leader(self) -> bool:
        return self.leader is not None and self.pooler.backend_port == self.leader.port

    @property
    def running(self) -> bool:
        """Every process runs, there is a leader and PgBouncer points at it."""
        return all(p is not None for p in self.processes.values()) and self.pooler.running and self.pooler_follows_leader

    def describe(self) -> str:
        if not self.created:
            return f"patroni: not created yet (directory {self.base_dir})\npgbouncer: stopped"
        procs = ", ".join(f"{k} running (pid {p})" if p else f"{k} stopped" for k, p in self.processes.items())
        lines = [f"patroni: {procs}; data in {self.base_dir}"]
        if any(self.processes.values()) and self.members is None:
            lines.append("  no member answers on Patroni's REST API")
        for m in self.members or ():
            lag = "" if m.role == "leader" else f", lag {m.lag}{' bytes' if isinstance(m.lag, int) else ''}"
            lines.append(f"  {m.name}: {m.role}, {m.state}, {m.host}:{m.port}, timeline {m.timeline}{lag}")
        lines.append(self.pooler.describe())
        leader = self.leader
        if self.pooler.running and leader is not None and not self.pooler_follows_leader:
            lines.append(f"  PgBouncer points at port {self.pooler.backend_port}, not at the leader {leader.name} "
                         f"({leader.host}:{leader.port}): run `hokmdb topology start` to point it there")
        elif self.pooler.running and leader is not None:
            lines.append(f"  PgBouncer routes to the leader {leader.name}")
        return "\n".join(lines)


class LocalPatroniTopology:
    """etcd + two Patroni nodes + PgBouncer following the leader, in ``base_dir``. ``durable``
    (an environment's data, the default): fsync stays on."""

    def __init__(self, base_dir: Path, *, os_user: str | None = None, bin_dir: Path | None = None,
                 pooler_roles: Sequence[str] = (), durable: bool = True) -> None:
        self.base_dir = Path(base_dir)
        self.pooler_dir = self.base_dir / "pgbouncer"
        callback = (_patroni_python(), str(self.base_dir / FOLLOW_SCRIPT), str(self.pooler_dir))
        self.patroni = LocalPatroni(self.base_dir, os_user=os_user, bin_dir=bin_dir, callback=callback, durable=durable)
        self.pooler = PgBouncer(self.pooler_dir, self.patroni.user)
        self.pooler_roles = tuple(pooler_roles)

    # -- state -----------------------------------------------------------------------------

    def created(self) -> bool:
        return self.patroni.created()

    @property
    def rest_urls(self) -> list[str]:
        return self.patroni.rest_urls

    @property
    def expected_members(self) -> int:
        return len(NODES)

    @property
    def pooler_port(self) -> int:
        return self.pooler.port

    def status(self) -> PatroniTopologyStatus:
        if not self.created():
            return PatroniTopologyStatus(self.base_dir, False, dict.fromkeys(("etcd", *NODES)), None, self.pooler.status())
        processes = self.patroni.processes()
        members = self.patroni.members() if any(processes.values()) else None
        return PatroniTopologyStatus(self.base_dir, True, processes, tuple(members) if members is not None else None,
                                     self.pooler.status())

    def leader(self) -> Member:
        """The running leader, or a ClusterError saying what to look at."""
        leader = self.patroni.leader() if self.created() else None
        if leader is None:
            raise ClusterError(f"the Patroni cluster in {self.base_dir} has no running leader",
                               hint=f"`hokmdb topology status` lists the members; logs: {self.base_dir}/*.log")
        return leader

    # -- commands --------------------------------------------------------------------------

    def start_servers(self) -> None:
        """Start etcd and both nodes (bootstrapping them the first time) with the callback that
        makes PgBouncer follow the leader; idempotent."""
        self._install_callback()
        self.patroni.start()

    def start(self) -> PatroniTopologyStatus:
        """Servers, then PgBouncer in front of the leader; idempotent. The roles PgBouncer admits
        must exist (provisioned between ``start_servers`` and this)."""
        self.start_servers()
        self.refresh_pooler()
        return self.status()

    def refresh_pooler(self) -> None:
        """(Re)start PgBouncer in front of the current leader with the roles' SCRAM verifiers."""
        self.pooler.serve(self.patroni.admin_connect_kwargs(), backend_port=self.leader().port, roles=self.pooler_roles)
        self.follow_leader()

    def follow_leader(self) -> Member:
        """Point PgBouncer at the leader Patroni names now: a switchover between our look-up and
        PgBouncer's start found no PgBouncer for its callback to retarget."""
        leader = self.leader()
        if self.pooler.status().backend_port != leader.port:
            self.pooler.retarget(leader.port)
        return leader

    def stop(self) -> PatroniTopologyStatus:
        """Stop PgBouncer, the replica, the leader and etcd; keeps their data."""
        self.pooler.stop()
        self.patroni.stop()
        return self.status()

    def destroy(self) -> None:
        """Stop everything and remove the directory."""
        try:
            self.pooler.stop()
        finally:
            self.patroni.destroy()

    # -- pieces ----------------------------------------------------------------------------

    def _install_callback(self) -> None:
        """A copy of ``pgbouncer_follow.py`` the server's account can read: Patroni runs it as
        that account, which may not be able to enter the checkout (as root, under /root)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        target = self.base_dir / FOLLOW_SCRIPT
        shutil.copyfile(Path(pgbouncer_follow.__file__), target)
        target.chmod(0o700)
        user = self.patroni.user
        if user.switches:
            os.chown(target, user.uid, user.gid)

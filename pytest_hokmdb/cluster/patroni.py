"""A high-availability cluster on one machine: a one-node etcd and two PostgreSQL nodes managed
by Patroni (Debian's ``patroni`` and ``etcd-server``), on loopback only.

Patroni bootstraps the first node (initdb), clones the second from it, elects a leader through
etcd and serves its REST API per node (``/cluster``, ``/leader``, ``/switchover``). Like the
server it manages, it runs as the server's account. The superuser and replication passwords
reach Patroni through its environment (``PATRONI_SUPERUSER_PASSWORD``, ...), never its YAML
file or command line; the file holds only topology.

Used by the tests and rehearsals that need failover, and by ``hokmdb topology start`` for
``topology.local: "patroni"`` (``cluster/patroni_topology.py`` adds PgBouncer in front of the
leader, following it through a Patroni callback); ``cluster/topology.py`` is the lighter mode
(a pg_basebackup standby, no Patroni).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_hokmdb.cluster.binaries import find_bin_dir
from pytest_hokmdb.cluster.embedded import SUPERUSER, socket_dir_for
from pytest_hokmdb.cluster.osuser import OsUser, resolve_os_user
from pytest_hokmdb.cluster.process import environment_for, pid_alive, private_log
from pytest_hokmdb.cluster.scratch import reserved_port
from pytest_hokmdb.errors import ClusterError
from pytest_hokmdb.redaction import redact, register_secret

log = logging.getLogger(__name__)

SCOPE = "hokmdb"
NODES = ("node1", "node2")
_STATE = "hokmdb-patroni.json"
# Fast and unsafe on a crash: for the tests' throwaway clusters only (``durable=False``).
_THROWAWAY = '    fsync: "off"\n    synchronous_commit: "off"\n    full_page_writes: "off"\n'
# What each process's /proc/PID/stat names it: a reused pid is not taken for ours.
_COMMAND = {"etcd": "etcd", **{n: "patroni" for n in NODES}}


@dataclass(frozen=True)
class Member:
    name: str
    role: str
    state: str
    host: str
    port: int
    timeline: int | None
    lag: Any


def _binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).is_file()), None)
    if found is None:
        raise ClusterError(f"{name} is not installed on this machine",
                           hint="run scripts/ensure-topology.sh as root (apt-get install patroni etcd-server)")
    return found


def rest_get(url: str, timeout_s: float = 3.0) -> tuple[int, Any]:
    """(status, JSON body) of a GET on a Patroni REST endpoint; (0, None) when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback http, built here
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def cluster_members(rest_urls: list[str], timeout_s: float = 3.0) -> list[Member] | None:
    """Members as Patroni's ``/cluster`` lists them, from the first REST URL that answers."""
    for base in rest_urls:
        status, body = rest_get(base.rstrip("/") + "/cluster", timeout_s)
        if status == 200 and isinstance(body, dict):
            return [Member(m.get("name", "?"), m.get("role", "?"), m.get("state", "?"), m.get("host", "?"),
                           int(m.get("port", 0)), m.get("timeline"), m.get("lag")) for m in body.get("members", [])]
    return None


class LocalPatroni:
    """etcd + two Patroni-managed PostgreSQL nodes in ``base_dir``.

    ``callback``: a command Patroni runs, as the server's account, when a node starts or changes
    role (``on_start``, ``on_role_change``); the node's PostgreSQL port is appended to it, then
    Patroni appends ``<action> <role> <scope>``. ``durable``: keep fsync and full-page writes on
    (an environment's data); off, the throwaway settings the tests' clusters run with."""

    def __init__(self, base_dir: Path, *, os_user: str | None = None, bin_dir: Path | None = None,
                 callback: Sequence[str] | None = None, durable: bool = False) -> None:
        self.base_dir = Path(base_dir)
        self.user: OsUser = resolve_os_user(os_user)
        self.bin_dir = find_bin_dir(bin_dir)
        self.callback = tuple(callback) if callback else None
        self.durable = durable

    # -- state --------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.base_dir / _STATE).read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, **values: Any) -> None:
        path = self.base_dir / _STATE
        path.write_text(json.dumps({**self._state(), **values}, indent=2))
        path.chmod(0o600)

    @property
    def state_file(self) -> Path:
        """0600: the generated passwords (superuser, replication, and the roles hokmdb provisions)."""
        return self.base_dir / _STATE

    def created(self) -> bool:
        """Whether a first start has chosen the ports (so ``ports``/``rest_urls`` answer)."""
        return "nodes" in self._state()

    @property
    def superuser_password(self) -> str:
        password = self._state().get("superuser_password")
        if not isinstance(password, str):
            raise ClusterError(f"the Patroni cluster in {self.base_dir} has not been started")
        register_secret(password)
        return password

    def ports(self, node: str) -> tuple[int, int]:
        """(PostgreSQL port, REST port) of ``node``."""
        nodes = self._state().get("nodes", {})
        return int(nodes[node]["pg"]), int(nodes[node]["rest"])

    @property
    def rest_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ports(n)[1]}" for n in NODES]

    def members(self) -> list[Member] | None:
        """As Patroni's REST API lists them; None when none answers (or none was ever started)."""
        return cluster_members(self.rest_urls) if self.created() else None

    def leader(self) -> Member | None:
        return next((m for m in self.members() or [] if m.role == "leader" and m.state == "running"), None)

    def admin_connect_kwargs(self, dbname: str = "postgres") -> dict[str, object]:
        """asyncpg keyword arguments for the superuser on the current leader (what provisioning
        needs, like ``EmbeddedCluster.admin_connect_kwargs``)."""
        leader = self.leader()
        if leader is None:
            raise ClusterError(f"the Patroni cluster in {self.base_dir} has no running leader",
                               hint=f"logs: {self.base_dir}/*.log")
        return {"host": leader.host, "port": leader.port, "user": SUPERUSER, "password": self.superuser_password,
                "database": dbname, "ssl": False}

    def processes(self) -> dict[str, int | None]:
        """etcd's and each node's Patroni pid, None for those not running."""
        pids = self._state().get("pids", {})
        return {key: pids.get(key) if self._alive(key) else None for key in ("etcd", *NODES)}

    def running(self) -> bool:
        """Whether etcd and both Patroni processes run (not whether they are healthy)."""
        return all(pid is not None for pid in self.processes().values())

    # -- processes --------------------------------------------------------------------------------

    def _own(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if self.user.switches:
            os.chown(path, self.user.uid, self.user.gid)

    def _env(self, *, patroni: bool = True) -> dict[str, str]:
        """A fresh environment (``environment_for``: nothing of the operator's, so no
        PYTHONPATH or virtualenv of hokmdb's shadows the system Python's Patroni either); the
        database passwords only for Patroni itself, never for etcd."""
        env = environment_for(self.user, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        if patroni:
            state = self._state()
            env.update(PATRONI_SUPERUSER_USERNAME="postgres", PATRONI_SUPERUSER_PASSWORD=state["superuser_password"],
                       PATRONI_REPLICATION_USERNAME="replicator", PATRONI_REPLICATION_PASSWORD=state["replication_password"])
        return env

    def _spawn(self, args: list[str], log_name: str) -> int:
        log_path = private_log(self.base_dir / log_name, self.user)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own arguments
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base_dir,
                env=self._env(patroni=log_name != "etcd.log"),
                start_new_session=True, **self.user.subprocess_kwargs(),  # type: ignore[arg-type]
            )
        return proc.pid

    def _alive(self, key: str) -> bool:
        pid = self._state().get("pids", {}).get(key)
        return pid_alive(pid if isinstance(pid, int) else None, _COMMAND.get(key))

    def _fast_settings(self) -> str:
        """The throwaway settings (``durable=False``), indented for ``postgresql.parameters``."""
        return "" if self.durable else _THROWAWAY

    def _callbacks_yaml(self, pg_port: int) -> str:
        """The ``postgresql.callbacks`` section (JSON strings are YAML strings)."""
        if not self.callback:
            return ""
        command = json.dumps(shlex.join([*self.callback, str(pg_port)]))
        return f"  callbacks:\n    on_start: {command}\n    on_role_change: {command}\n"

    def _socket_dir(self, node: str) -> Path:
        """The node's directory, or a short one under the temp dir when a socket path there
        would be too long (107 bytes)."""
        path = socket_dir_for(self.base_dir / node)
        self._own(path)
        return path

    def _node_yaml(self, node: str, pg_port: int, rest_port: int, etcd_port: int) -> Path:
        data_dir = self.base_dir / node / "data"
        text = f"""# written by hokmdb; passwords come from the environment (PATRONI_*_PASSWORD)
scope: {SCOPE}
name: {node}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: false
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        hot_standby_feedback: "on"
        password_encryption: scram-sha-256
  initdb:
    - encoding: UTF8
    - auth-host: scram-sha-256
    - auth-local: trust
    - no-locale
    - data-checksums
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data_dir}
  bin_dir: {self.bin_dir}
  pgpass: {self.base_dir / node / "pgpass"}
  parameters:
    unix_socket_directories: {self._socket_dir(node)}
    jit: "off"
    shared_preload_libraries: pg_stat_statements
{self._fast_settings()}{self._callbacks_yaml(pg_port)}"""
        path = self.base_dir / f"{node}.yml"
        path.write_text(text)
        path.chmod(0o600)
        if self.user.switches:
            os.chown(path, self.user.uid, self.user.gid)
        return path

    def start(self, *, timeout_s: float = 120.0) -> list[Member]:
        """Start etcd and both nodes (bootstrapping on the first start); wait for a leader and a
        streaming replica. Idempotent."""
        self._own(self.base_dir, 0o755 if self.user.switches else 0o700)
        state = self._state()
        if "superuser_password" not in state:
            self._write_state(superuser_password=secrets.token_urlsafe(24), replication_password=secrets.token_urlsafe(24))
        register_secret(self._state()["superuser_password"])
        register_secret(self._state()["replication_password"])
        with contextlib.ExitStack() as stack:
            if "nodes" not in self._state():
                ports = [stack.enter_context(reserved_port()) for _ in range(2 * len(NODES) + 2)]
                self._write_state(etcd=[ports[0], ports[1]],
                                  nodes={n: {"pg": ports[2 + 2 * i], "rest": ports[3 + 2 * i]} for i, n in enumerate(NODES)})
            state = self._state()
            pids: dict[str, int] = dict(state.get("pids", {}))
            if not self._alive("etcd"):
                client, peer = state["etcd"]
                self._own(self.base_dir / "etcd")
                pids["etcd"] = self._spawn([
                    _binary("etcd"), "--name", "hokmdb", "--data-dir", str(self.base_dir / "etcd"),
                    "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", f"hokmdb=http://127.0.0.1:{peer}",
                ], "etcd.log")
                self._write_state(pids=pids)
                self._wait(lambda: rest_get(f"http://127.0.0.1:{client}/health")[0] == 200, 30, "etcd did not become healthy",
                           ("etcd",))
            for i, node in enumerate(self._start_order()):
                if self._alive(node):
                    continue
                self._own(self.base_dir / node)
                pg, rest = state["nodes"][node]["pg"], state["nodes"][node]["rest"]
                yaml = self._node_yaml(node, pg, rest, state["etcd"][0])
                pids[node] = self._spawn([_binary("patroni"), str(yaml)], f"{node}.log")
                self._write_state(pids=pids)
                if i == 0:
                    self._wait(lambda: self.leader() is not None, timeout_s, "Patroni elected no leader", ("etcd", node))
        self._wait(self._healthy, timeout_s, "the Patroni cluster did not get a leader and a streaming replica")
        return self.members() or []

    def _exited(self, watched: Sequence[str]) -> str | None:
        """A started process of ``watched`` that is gone, with the last line of its log: no use
        waiting for it."""
        for key in watched:
            if key in self._state().get("pids", {}) and not self._alive(key):
                try:
                    last = (self.base_dir / f"{key}.log").read_text(errors="replace").strip().splitlines()[-1]
                except (OSError, IndexError):
                    last = "no log"
                return f"{key} exited ({redact(last[-200:])})"
        return None

    def _healthy(self) -> bool:
        members = self.members() or []
        return (any(m.role == "leader" and m.state == "running" for m in members)
                and any(m.role in ("replica", "sync_standby") and m.state in ("running", "streaming") for m in members))

    def _wait(self, probe: Any, timeout_s: float, what: str, watched: Sequence[str] = ("etcd", *NODES)) -> None:
        """Until ``probe()``; fails at once when a ``watched`` process has exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if probe():
                return
            if (gone := self._exited(watched)) is not None:
                raise ClusterError(f"{what}: {gone}", hint=f"logs: {self.base_dir}/*.log")
            time.sleep(0.2)
        raise ClusterError(f"{what} within {timeout_s:.0f} s", hint=f"logs: {self.base_dir}/*.log")

    def switchover(self, candidate: str | None = None, *, timeout_s: float = 60.0) -> Member:
        """Patroni's planned switchover (POST /switchover on the leader); returns the new leader."""
        leader = self.leader()
        if leader is None:
            raise ClusterError("no leader to switch over from")
        target = candidate or next(m.name for m in self.members() or [] if m.name != leader.name)
        body = json.dumps({"leader": leader.name, "candidate": target}).encode()
        rest = self.ports(leader.name)[1]
        request = urllib.request.Request(f"http://127.0.0.1:{rest}/switchover", data=body, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - loopback http
            response.read()
        self._wait(lambda: (m := self.leader()) is not None and m.name == target, timeout_s, f"{target} did not become leader")
        new = self.leader()
        assert new is not None
        return new

    def _stop_order(self) -> list[str]:
        """Replicas before the leader: a replica still running when the leader stops would take
        over (failover) just before it is stopped itself. The leader is remembered for the next
        start (``_start_order``)."""
        leader = self.leader()
        if leader is not None:
            self._write_state(last_leader=leader.name)
        nodes = sorted(NODES, key=lambda n: leader is not None and n == leader.name)
        return [*nodes, "etcd"]

    def _start_order(self) -> list[str]:
        """The last leader first: it stopped last and has the newest WAL. The node started first
        wins the leader race (the second starts once there is a leader); were it the old replica,
        the old leader could not follow it (its last WAL, the shutdown checkpoint, is not on the
        new timeline, and there is no pg_rewind here)."""
        last = self._state().get("last_leader")
        return sorted(NODES, key=lambda n: n != last)

    def stop(self) -> None:
        """Stop the replica, then the leader (Patroni stops its PostgreSQL), then etcd."""
        pids = self._state().get("pids", {})
        for key in self._stop_order():
            pid = pids.get(key)
            if isinstance(pid, int) and self._alive(key):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self._alive(key):
                    time.sleep(0.1)
                if self._alive(key):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
        # A PostgreSQL left behind by a killed Patroni.
        for node in NODES:
            pidfile = self.base_dir / node / "data" / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGQUIT)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

"""Where every throwaway PostgreSQL lives, and the janitor that finds the ones nobody owns.

Scratch clusters (the xdist workers' own, reference catalogs, backup verification) are
created under one tracked root, ``$HOKMDB_SCRATCH_DIR`` or ``$TMPDIR/hokmdb-scratch``, each in
a directory that records its owner (pid and the process's start time, so a reused pid is
not mistaken for the owner). A worker killed with SIGKILL cannot clean up after itself;
``sweep_orphans`` stops the server of every directory whose owner is gone and removes it. It
runs before each new scratch cluster starts, when a pytest session ends, and in
``rollback.py cleanup`` (which lists the same directories with ``--dry-run``), so a killed
worker's cluster is gone by the end of the run that killed it, and a killed full backup
verification's server (which holds a decrypted copy of the backup) by the next cleanup.

The same owner record (``owner_record``, ``owner_alive``) marks what else a process leaves
on a server while it runs, such as the scratch database of ``--restore-from-backup``.

Ports: picking a free port and binding it later is a race between parallel workers. A
port is *reserved* (an ``O_EXCL`` file under the root's ``ports/``) from the moment it is
picked until the server listens on it; another process skips reserved ports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("hokmdb.cluster.scratch")

OWNER_FILE = "hokmdb-owner.json"
_RESERVATION_TTL_S = 300.0


def _configured_root() -> Path:
    return Path(os.environ.get("HOKMDB_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "hokmdb-scratch")


def scratch_root() -> Path:
    root = _configured_root()
    _shared_dir(root)
    return root


def _shared_dir(path: Path) -> None:
    """A directory every account may add to and none may delete others' entries from (like
    /tmp): root and unprivileged users share the scratch root and the port reservations, and
    the server account (postgres, when we are root) must be able to enter it."""
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        path.chmod(0o1777)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def owner_record() -> dict[str, object]:
    """This process, as ``owner_alive`` recognises it later: pid and start time (a reused pid
    is not mistaken for it), host, boot and pid namespace (nor is a pid of another machine,
    boot or container)."""
    pid = os.getpid()
    return {"pid": pid, "started": _start_time(pid), "host": socket.gethostname(), "boot": _boot_id(),
            "pidns": _pid_namespace()}


def owner_alive(owner: dict[str, object]) -> bool | None:
    """Whether the process ``owner`` records still runs; None when it ran on another host (or
    in another container's pid namespace), whose processes cannot be looked at from here."""
    host, pidns = owner.get("host"), owner.get("pidns")
    if isinstance(host, str) and host != socket.gethostname():
        return None
    if isinstance(pidns, str) and pidns != _pid_namespace():
        return None
    boot = owner.get("boot")
    if isinstance(boot, str) and boot != _boot_id():
        return False  # this machine has rebooted since: every process of that boot is gone
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    started = _start_time(pid)
    return started is not None and started == owner.get("started")


def new_scratch_dir(label: str) -> Path:
    """A fresh directory under the root, recorded as owned by this process."""
    path = scratch_root() / f"{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    (path / OWNER_FILE).write_text(json.dumps(owner_record()))
    return path


def orphans(root: Path | None = None) -> list[Path]:
    """The tracked scratch directories under ``root`` (default: the configured root) whose
    owner process is gone."""
    root = root or _configured_root()
    if not root.is_dir():
        return []
    found: list[Path] = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "ports"):
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not (yet) a tracked directory: leave it
        if owner_alive(owner) is False:  # None (another host's): not ours to judge
            found.append(path)
    return found


def sweep_orphans(destroy: Callable[[Path], None], root: Path | None = None, *, dry_run: bool = False) -> list[Path]:
    """Stop (``destroy``) and remove every scratch cluster whose owner process is gone;
    returns the directories removed (``dry_run``: the ones that would be, touching nothing)."""
    if dry_run:
        return orphans(root)
    removed: list[Path] = []
    for path in orphans(root):
        try:
            destroy(path)
        except Exception as exc:  # noqa: BLE001 - a janitor reports and goes on
            log.warning("could not stop the orphaned scratch cluster in %s: %s", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
            log.info("removed the scratch cluster of a process that is gone: %s", path)
    ports = (root or _configured_root()) / "ports"
    for reservation in ports.glob("*") if ports.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads(reservation.read_text())
            if not owner_alive(owner) or time.time() - reservation.stat().st_mtime > _RESERVATION_TTL_S:
                reservation.unlink()
    return removed


@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A free port no other hokmdb process is about to use, held until the block ends
    (by then the server listens on it, and binding tells everyone else it is taken)."""
    ports = scratch_root() / "ports"
    _shared_dir(ports)
    me = json.dumps({"pid": os.getpid(), "started": _start_time(os.getpid())})
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        reservation = ports / str(port)
        try:
            fd = os.open(reservation, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another worker picked it a moment ago
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        try:
            yield port
        finally:
            reservation.unlink(missing_ok=True)
        return
    raise OSError("no free port could be reserved on 127.0.0.1 after 50 tries")

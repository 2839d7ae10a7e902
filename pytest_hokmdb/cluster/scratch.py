"""Where every throwaway PostgreSQL lives, and the janitor that finds the ones nobody owns.

Scratch clusters (the xdist workers' own, reference catalogs, backup verification) are
created under one tracked root, ``$HOKMDB_SCRATCH_DIR`` or ``$TMPDIR/hokmdb-scratch``, each in
a directory that records its owner (pid and the process's start time, so a reused pid is
not mistaken for the owner). A worker killed with SIGKILL cannot clean up after itself;
``sweep_orphans`` stops the server of every directory whose owner is gone and removes it. It
runs before each new scratch cluster starts and when a pytest session ends, so a killed
worker's cluster is gone by the end of the run that killed it.

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


def scratch_root() -> Path:
    root = Path(os.environ.get("HOKMDB_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "hokmdb-scratch")
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


def _owner_alive(owner: dict[str, object]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    started = _start_time(pid)
    return started is not None and started == owner.get("started")


def new_scratch_dir(label: str) -> Path:
    """A fresh directory under the root, recorded as owned by this process."""
    path = scratch_root() / f"{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    (path / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "started": _start_time(os.getpid())}))
    return path


def sweep_orphans(destroy: Callable[[Path], None], root: Path | None = None) -> list[Path]:
    """Stop (``destroy``) and remove every scratch cluster whose owner process is gone."""
    if root is None:
        configured = Path(os.environ.get("HOKMDB_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "hokmdb-scratch")
        if not configured.is_dir():
            return []
        root = configured
    removed: list[Path] = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "ports"):
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not (yet) a tracked directory: leave it
        if _owner_alive(owner):
            continue
        try:
            destroy(path)
        except Exception as exc:  # noqa: BLE001 - a janitor reports and goes on
            log.warning("could not stop the orphaned scratch cluster in %s: %s", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
            log.info("removed the scratch cluster of a process that is gone: %s", path)
    for reservation in (root / "ports").glob("*") if (root / "ports").is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads(reservation.read_text())
            if not _owner_alive(owner) or time.time() - reservation.stat().st_mtime > _RESERVATION_TTL_S:
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

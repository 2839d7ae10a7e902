"""The one place that runs a PostgreSQL server's programs and judges whether it is alive, for
every server the project starts: embedded and scratch clusters (``embedded.py``) and restored
point-in-time copies (``pitr/recovery.py``).

Programs run as the server's account (PostgreSQL refuses root), with the environment the
caller builds with ``environment_for`` (never the operator's whole environment); a postmaster counts as alive when its ``postmaster.pid`` names a process that
exists and is not a zombie (``pg_ctl status`` says "running" for a zombie nobody reaped)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pytest_hokmdb.cluster.osuser import OsUser

# What a process hokmdb starts may take from the environment of whoever started hokmdb: where
# programs are, the home and temporary directories, the time zone. Nothing else: the operator's
# shell holds BACKUP_ENCRYPTION_KEY, DB_PASSWORD_*, cloud keys, and a database superuser reads
# a server's environment (COPY ... FROM PROGRAM 'cat /proc/self/environ'); etcd needs no
# database password. What a process needs beyond this, its caller adds by name.
INHERITED = ("PATH", "HOME", "TMPDIR", "TZ")


def environment_for(user: OsUser | None = None, **extra: str) -> dict[str, str]:
    """A fresh environment for a server or tool hokmdb starts (``INHERITED``), as ``user``
    (its HOME and USER when hokmdb switches to it), in the C locale, plus ``extra``."""
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if user is not None:
        env.update(user.env())
    env.update(LC_ALL="C", LANG="C")
    env.update(extra)
    return env


def private_log(path: Path, user: OsUser | None = None) -> Path:
    """A log file only its server's account reads (0600), created so before the server writes
    to it: with ``log_statement = all`` a server log holds password verifiers and data."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    path.chmod(0o600)
    if user is not None and user.switches:
        os.chown(path, user.uid, user.gid)
    return path


def run_as(user: OsUser, args: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``args`` as ``user``; ``subprocess.TimeoutExpired`` is the caller's to explain."""
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        cwd=cwd,
        timeout=timeout,
        **user.subprocess_kwargs(),  # type: ignore[arg-type]
    )


def run_as_until(
    user: OsUser, args: list[str], *, env: dict[str, str], cwd: Path, timeout: float, done: Callable[[], bool]
) -> subprocess.CompletedProcess[str] | None:
    """``run_as``, returning as soon as ``done()`` holds (asked every 5 ms) rather than when
    the program exits: None then, and the program finishes and is reaped on its own thread.

    Why: ``pg_ctl -w`` looks at the server a tenth of a second apart (PostgreSQL's
    WAITS_PER_SEC), so a start that is ready in 40 ms, or an immediate stop done in 5 ms, cost
    100 ms each; the test suites start and stop dozens of clusters. A program that exits
    before ``done()`` holds (pg_ctl reporting a failure) gives its result as ``run_as`` would.
    """
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=env,
        cwd=cwd,
        **user.subprocess_kwargs(),  # type: ignore[arg-type]
    )
    deadline = time.monotonic() + timeout
    while True:
        if done():
            threading.Thread(target=proc.communicate, name="hokmdb-reap", daemon=True).start()
            return None
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise subprocess.TimeoutExpired(args, timeout)
        time.sleep(0.005)


def postmaster_ready(data_dir: Path, since: float) -> bool:
    """Whether a postmaster started at or after ``since`` (epoch seconds) runs on ``data_dir``
    and reports itself ready for connections: what ``pg_ctl start -w`` waits for
    (``postmaster.pid``'s status line), a stale file of a killed server excluded."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, started, status = int(lines[0]), int(lines[2]), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return False
    return status in ("ready", "standby") and started >= int(since) - 1 and pid_alive(pid)


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None, name: str | None = None) -> bool:
    """Whether process ``pid`` exists and is not a zombie (and, given ``name``, that its command
    name contains it, so a reused pid is not mistaken for ours)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if name is not None and name not in stat.split(")", 1)[0]:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def postmaster_alive(data_dir: Path) -> bool:
    """Whether the postmaster of ``data_dir`` runs; a zombie (nobody reaped it) counts as gone."""
    return pid_alive(postmaster_pid(data_dir))

"""The one place that runs a PostgreSQL server's programs and judges whether it is alive, for
every server the project starts: embedded and scratch clusters (``embedded.py``) and restored
point-in-time copies (``pitr/recovery.py``).

Programs run as the server's account (PostgreSQL refuses root), with the environment the
caller gives; a postmaster counts as alive when its ``postmaster.pid`` names a process that
exists and is not a zombie (``pg_ctl status`` says "running" for a zombie nobody reaped)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pytest_hokmdb.cluster.osuser import OsUser


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

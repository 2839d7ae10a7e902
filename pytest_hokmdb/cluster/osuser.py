"""Which operating-system account the PostgreSQL server runs as.

As a normal user the server runs as that user. As root it must not (PostgreSQL refuses),
so it runs as an unprivileged account: ``embedded.os_user``, ``HOKMDB_PG_OS_USER``, or
``postgres``; if none exists, hokmdb creates a system account ``hokmdb-pg``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_hokmdb.errors import ClusterError

FALLBACK_ACCOUNT = "hokmdb-pg"


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    home: str
    switches: bool  # True when hokmdb runs as root and drops to this account for the server

    def subprocess_kwargs(self) -> dict[str, object]:
        if not self.switches:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": [], "umask": 0o077}

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name} if self.switches else {}

    def can_enter(self, path: Path) -> bool:
        """Whether this account can traverse into ``path`` (asks the kernel, as that account)."""
        if not self.switches:
            return os.access(path, os.X_OK)
        result = subprocess.run(["test", "-x", str(path)], check=False, **self.subprocess_kwargs())  # type: ignore[arg-type]
        return result.returncode == 0


def _create_account(name: str) -> None:
    tool = shutil.which("useradd")
    if tool is None:
        raise ClusterError(
            "running as root and no unprivileged account exists for PostgreSQL",
            hint="create one (useradd --system postgres) or set HOKMDB_PG_OS_USER to an existing account",
        )
    subprocess.run([tool, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)


def resolve_os_user(configured: str | None = None) -> OsUser:
    me = pwd.getpwuid(os.geteuid())
    if os.geteuid() != 0:
        return OsUser(me.pw_name, me.pw_uid, me.pw_gid, me.pw_dir, switches=False)
    wanted = configured or os.environ.get("HOKMDB_PG_OS_USER")
    names = [wanted] if wanted else ["postgres", FALLBACK_ACCOUNT]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise ClusterError(f"account {name!r} is root; PostgreSQL needs an unprivileged account")
        return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/", switches=True)
    if wanted:
        raise ClusterError(f"the account {wanted!r} chosen to run PostgreSQL does not exist")
    _create_account(FALLBACK_ACCOUNT)
    entry = pwd.getpwnam(FALLBACK_ACCOUNT)
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, "/", switches=True)

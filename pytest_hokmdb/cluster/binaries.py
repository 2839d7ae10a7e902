"""Locate the PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_dump, ...)."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from pytest_hokmdb.errors import ClusterError

_REQUIRED = ("initdb", "pg_ctl", "postgres")


def _has_server(path: Path) -> bool:
    return all((path / name).is_file() and os.access(path / name, os.X_OK) for name in _REQUIRED)


@lru_cache(maxsize=8)
def find_bin_dir(configured: Path | None = None) -> Path:
    """The configured bin dir, else ``HOKMDB_PG_BIN``, else ``pg_config --bindir``, else the
    newest ``/usr/lib/postgresql/N/bin``, else PATH.

    Debian's ``pg_config`` may report the client-only bin dir, so every candidate must
    hold the server binaries.
    """
    if configured:
        # An explicit choice is never silently replaced by another installation.
        if _has_server(Path(configured)):
            return Path(configured)
        raise ClusterError(
            f"embedded.bin_dir {configured} does not contain initdb, pg_ctl and postgres",
            hint="point it at the PostgreSQL server's bin directory (e.g. /usr/lib/postgresql/15/bin)",
        )
    candidates: list[Path] = []
    if os.environ.get("HOKMDB_PG_BIN"):
        candidates.append(Path(os.environ["HOKMDB_PG_BIN"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    candidates.extend(reversed(debian))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for candidate in candidates:
        if _has_server(candidate):
            return candidate
    raise ClusterError(
        "no PostgreSQL server binaries found (initdb, pg_ctl, postgres)",
        hint="install them (Debian: apt-get install postgresql-15) or set HOKMDB_PG_BIN to their directory",
    )

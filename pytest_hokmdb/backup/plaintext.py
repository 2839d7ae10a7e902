"""Where a decrypted backup lives while it is checked and restored: a file without a name.

pg_restore needs a seekable archive (``--jobs`` workers reopen it and jump to their tables),
so the plaintext cannot only stream through a pipe. It goes into an *anonymous* file instead:
``O_TMPFILE`` (or, where a filesystem lacks it, a file unlinked before the first byte is
written). Nothing in any directory ever names it, and the kernel frees it when the last
descriptor closes, which a ``kill -9`` of the process does too. Child processes running as
the same account (pg_restore, ``pg_restore --list``) open it through ``/proc/PID/fd/N``.

Versions before this one decrypted to ``$TMPDIR/hokmdb-restore-XXXX/ID.dump``; a killed
restore left the whole database there in plaintext. ``stale_plaintext`` finds those for
``rollback.py cleanup``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

LEGACY_PREFIX = "hokmdb-restore-"


def scratch_dir() -> Path:
    """Where the anonymous file's blocks live: ``HOKMDB_BACKUP_TMP``, else the temp dir."""
    return Path(os.environ.get("HOKMDB_BACKUP_TMP", tempfile.gettempdir()))


@contextlib.contextmanager
def anonymous_file(directory: Path) -> Iterator[tuple[int, Path]]:
    """An unnamed read-write file (mode 0600) in ``directory``'s filesystem: (fd, path a child
    process of this account can open). Closed, and so gone, on exit."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        # No O_TMPFILE here: a private name, unlinked before anything is written to it.
        name = directory / f".hokmdb-{secrets.token_hex(8)}"
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        os.unlink(name)
    try:
        yield fd, Path(f"/proc/{os.getpid()}/fd/{fd}")
    finally:
        os.close(fd)


def _open_paths() -> set[str]:
    """Every path some process on this machine holds open (that we may look at)."""
    paths: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            entries = list(fd_dir.iterdir())
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                paths.add(os.readlink(entry))
    return paths


def stale_plaintext(directory: Path) -> list[Path]:
    """Directories of decrypted dumps that earlier versions left behind, unless some process
    still has a file in them open (a restore of such a version still running)."""
    candidates = [p for p in directory.glob(f"{LEGACY_PREFIX}*") if p.is_dir() and not p.is_symlink()]
    if not candidates:
        return []
    open_paths = _open_paths()
    return [p for p in sorted(candidates) if not any(o == str(p) or o.startswith(f"{p}/") for o in open_paths)]

"""Point a hokmdb PgBouncer at another backend port and have it reload: how PgBouncer follows
Patroni's leader.

Patroni runs this file as a callback (``on_start`` and ``on_role_change``) on the node whose
role changed, with the node's own PostgreSQL port appended to the command and Patroni's
``<action> <role> <scope>`` after it. On the node that became the leader it rewrites the
``[databases]`` targets of PgBouncer's ini to that port and sends PgBouncer SIGHUP, which is
PgBouncer's ``RELOAD``: changed database entries make it close their server connections as
they are released, so new transactions reach the new leader. A node that became a replica
does nothing.

Patroni runs it as the server's account with its own interpreter (Debian's
``/usr/bin/python3``), from a copy in the topology's directory: it imports nothing of hokmdb
(the checkout may sit where that account cannot read it) and prints no environment (Patroni's
holds the passwords). ``cluster/pgbouncer.py`` uses the same ``retarget`` when hokmdb itself
points PgBouncer at the leader.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path

INI = "pgbouncer.ini"
STATE = "hokmdb-pgbouncer.json"
PID = "pgbouncer.pid"
# Patroni 3.0 passes "master" for a promoted node; later releases "primary".
LEADER_ROLES = ("master", "primary", "promoted")
ACTIONS = ("on_start", "on_role_change")
_PORT = re.compile(r"(?<=\s)port=\d+")


def _replace(path: Path, text: str) -> None:
    """Write ``text`` next to ``path`` and rename it over: PgBouncer never reads half a file.
    The new file is 0600 and keeps the old one's owner where we may give it (hokmdb as root
    rewriting a file of the server's account, which PgBouncer must still read)."""
    tmp = path.with_name(path.name + ".follow")
    tmp.write_text(text)
    tmp.chmod(0o600)
    with contextlib.suppress(OSError):
        owner = path.stat()
        os.chown(tmp, owner.st_uid, owner.st_gid)
    tmp.replace(path)


def _retargeted_ini(text: str, port: int) -> str:
    """``text`` with every ``port=`` of its ``[databases]`` section set to ``port``."""
    section, lines = "", []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped.lower()
        elif section == "[databases]" and "=" in line and not stripped.startswith((";", "#")):
            line = _PORT.sub(f"port={port}", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _pid(base_dir: Path) -> int | None:
    """PgBouncer's pid when it runs (its command name says so: a reused pid is not signalled)."""
    try:
        pid = int((base_dir / PID).read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    alive = "pgbouncer" in stat.split(")", 1)[0] and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    return pid if alive else None


def retarget(base_dir: Path, port: int) -> bool:
    """Point the PgBouncer in ``base_dir`` at ``port`` and reload it if it runs; False when there
    is no PgBouncer there yet (hokmdb points it at the leader when it starts it)."""
    ini = base_dir / INI
    try:
        text = ini.read_text()
    except OSError:
        return False
    new = _retargeted_ini(text, port)
    if new != text:
        _replace(ini, new)
    state_path = base_dir / STATE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    if state.get("backend_port") != port:
        state["backend_port"] = port
        _replace(state_path, json.dumps(state, indent=2))
    pid = _pid(base_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
    return True


def main(argv: list[str]) -> int:
    """``<pgbouncer dir> <node's port> <action> <role> <scope>`` (Patroni appends the last three)."""
    if len(argv) < 4:
        print("usage: pgbouncer_follow.py PGBOUNCER_DIR PORT ACTION ROLE [SCOPE]", file=sys.stderr)
        return 2
    base_dir, port, action, role = Path(argv[0]), int(argv[1]), argv[2], argv[3]
    if action not in ACTIONS or role not in LEADER_ROLES:
        return 0
    if retarget(base_dir, port):
        print(f"hokmdb: {action} {role}: PgBouncer in {base_dir} now points at port {port} (reloaded)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

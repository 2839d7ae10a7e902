"""The physical-backup settings resolved against one PostgreSQL server.

``PhysicalBackupSettings`` may leave the server's location unset, meaning "the embedded
cluster"; everything below works on a ``PitrSetup`` where every location is concrete,
so the same code serves the embedded cluster and a server hokmdb does not run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pytest_hokmdb.cluster.binaries import find_bin_dir
from pytest_hokmdb.cluster.embedded import EmbeddedCluster
from pytest_hokmdb.cluster.osuser import OsUser, resolve_os_user
from pytest_hokmdb.config.model import PhysicalBackupSettings
from pytest_hokmdb.errors import ClusterError, ConfigError
from pytest_hokmdb.redaction import register_secrets

CONFIG_FILE = "pgbackrest.conf"
LEDGER_FILE = "restore-points.json"
DEFAULT_PG_PORT = 5432
# archive_command is run by the server through /bin/sh and written into postgresql.conf
# between single quotes, so paths in it must need no quoting at all.
_SHELL_SAFE_RE = re.compile(r"^[A-Za-z0-9_./+,:@%=-]+$")


@dataclass(frozen=True)
class StandbyLocation:
    """Where pgBackRest reaches the streaming standby it copies a backup from (its ``pg2``):
    a data directory on this host and the server's unix socket, like the primary's ``pg1``."""

    pg_data: Path
    port: int
    socket_dir: Path

    def describe(self) -> str:
        return f"standby {self.pg_data} (port {self.port})"


@dataclass(frozen=True)
class PitrSetup:
    """Where the server, its pgBackRest config and its private state are; who runs them.

    ``standby`` is set when backups are to be copied from a standby (``backup_standby``) and
    one was found; the backup refuses to run without it rather than fall back to the primary.
    """

    settings: PhysicalBackupSettings
    pg_data: Path
    pg_port: int
    socket_dir: Path
    work_dir: Path
    user: OsUser
    bin_dir: Path
    standby: StandbyLocation | None = None

    def __post_init__(self) -> None:
        register_secrets(self.settings.secrets())

    @property
    def stanza(self) -> str:
        return self.settings.stanza

    @property
    def config_file(self) -> Path:
        return self.work_dir / CONFIG_FILE

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "log"

    @property
    def lock_dir(self) -> Path:
        return self.work_dir / "lock"

    @property
    def spool_dir(self) -> Path:
        return self.work_dir / "spool"

    @property
    def ledger_file(self) -> Path:
        return self.work_dir / LEDGER_FILE

    @property
    def restores_dir(self) -> Path:
        """Default parent of restored copies: private, and reachable by the server account."""
        return self.work_dir / "restores"

    def command_log(self, command: str) -> Path:
        """pgBackRest's own detailed log of ``command`` (info level), kept in the private dir."""
        return self.log_dir / f"{self.stanza}-{command}.log"

    def own(self, path: Path, mode: int) -> None:
        """Create ``path`` (a directory) for the server account with ``mode``; idempotent."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if self.user.switches:
            os.chown(path, self.user.uid, self.user.gid)


def _absolute(path: Path, base: Path | None) -> Path:
    return path if path.is_absolute() else (base or Path.cwd()) / path


def shell_safe(path: Path, what: str) -> Path:
    if not _SHELL_SAFE_RE.match(str(path)):
        raise ConfigError(
            f"{what} {str(path)!r} contains characters that archive_command cannot carry unquoted",
            hint="use a path of letters, digits and ./_- only",
        )
    return path


def resolve_standby(
    settings: PhysicalBackupSettings,
    *,
    standby: EmbeddedCluster | None = None,
    project_root: Path | None = None,
) -> StandbyLocation | None:
    """The standby pgBackRest copies from: the configured ``standby_pg_*``, else ``standby``
    (the local topology's, when it has been created and started once); None without
    ``backup_standby`` or when there is none, which the backup turns into its refusal."""
    if not settings.backup_standby:
        return None
    if settings.standby_pg_data is not None:
        assert settings.standby_pg_socket_dir is not None  # the settings' validator pairs them
        return StandbyLocation(
            pg_data=_absolute(settings.standby_pg_data, project_root),
            port=settings.standby_pg_port or DEFAULT_PG_PORT,
            socket_dir=_absolute(settings.standby_pg_socket_dir, project_root),
        )
    if standby is None or not standby.initialized():
        return None
    try:
        port = standby.port
    except ClusterError:
        return None  # created but never started: no port to connect to
    return StandbyLocation(pg_data=standby.data_dir, port=port, socket_dir=standby.socket_dir)


def resolve_setup(
    settings: PhysicalBackupSettings,
    *,
    cluster: EmbeddedCluster | None = None,
    standby: EmbeddedCluster | None = None,
    project_root: Path | None = None,
) -> PitrSetup:
    """Fill the unset locations from ``cluster`` (the embedded one) and make paths absolute.

    Relative paths are taken from ``project_root`` (the config loader's ``project_root``),
    like every other path of the config. The embedded cluster's port is read from its
    state, so resolve after starting it when pgBackRest must connect (backup, check).
    ``standby`` is the local topology's standby, for ``backup_standby`` without
    ``standby_pg_*`` (see ``resolve_standby``).
    """
    if cluster is None and (settings.pg_data is None or settings.work_dir is None or settings.pg_socket_dir is None):
        raise ConfigError(
            "physical: pg_data, pg_socket_dir and work_dir default to the embedded cluster's, and there is none",
            hint="set physical.pg_data, physical.pg_socket_dir and physical.work_dir for a server hokmdb does not run",
        )
    account = cluster.user if cluster is not None and settings.os_user is None else resolve_os_user(settings.os_user)
    # The plain account: a cluster's may carry another setup's secrets in its environment.
    user = OsUser(account.name, account.uid, account.gid, account.home, account.switches)
    if settings.pg_data is not None:
        pg_data = _absolute(settings.pg_data, project_root)
    else:
        assert cluster is not None
        pg_data = cluster.data_dir
    if settings.work_dir is not None:
        work_dir = _absolute(settings.work_dir, project_root)
    else:
        assert cluster is not None
        work_dir = cluster.base_dir / "pgbackrest"
    if settings.pg_socket_dir is not None:
        socket_dir = _absolute(settings.pg_socket_dir, project_root)
    else:
        assert cluster is not None
        socket_dir = cluster.socket_dir
    port = settings.pg_port
    if port is None and cluster is not None:
        try:
            port = cluster.port
        except ClusterError:
            port = None  # not started yet: archive_command needs no port, backups re-resolve
    if settings.bin_dir is not None:
        bin_dir = find_bin_dir(_absolute(settings.bin_dir, project_root))
    elif cluster is not None:
        bin_dir = cluster.bin_dir
    else:
        bin_dir = find_bin_dir(None)
    if settings.repo_path is not None:
        repo = _absolute(settings.repo_path, project_root)
        settings = settings.model_copy(update={"repo_path": repo})
    shell_safe(work_dir, "physical.work_dir")
    return PitrSetup(
        settings=settings,
        pg_data=pg_data,
        pg_port=port or DEFAULT_PG_PORT,
        socket_dir=socket_dir,
        work_dir=work_dir,
        user=user,
        bin_dir=bin_dir,
        standby=resolve_standby(settings, standby=standby, project_root=project_root),
    )

"""Point-in-time recovery with pgBackRest: physical backups, WAL archiving, restores to a moment.

The pieces, in the order a caller meets them:

* ``resolve_setup`` turns ``config.physical`` (plus the embedded cluster) into a ``PitrSetup``;
* ``archiving_cluster`` / ``archive_settings`` + ``server_environment`` make a server archive;
* ``PgBackRest`` runs stanza-create, check, backup, info, verify, expire;
* ``create_restore_point`` marks (and records) a named point;
* ``recovery_window`` / ``resolve_target`` say what is reachable;
* ``restore_to_point`` recovers into a new directory and returns a running ``RestoredCopy``;
* ``standby_state`` checks the standby a ``backup_standby`` backup is copied from.
"""

from pytest_hokmdb.cluster.archive.conf import archive_settings, render_config, write_config
from pytest_hokmdb.cluster.archive.server import archiving_cluster, server_environment
from pytest_hokmdb.cluster.archive.settings import PitrSetup, StandbyLocation, resolve_setup
from pytest_hokmdb.pitr.engine import PgBackRest, VerifyReport, find_pgbackrest
from pytest_hokmdb.pitr.errors import (
    CipherPassWrong,
    PgBackRestError,
    RecoveryFailed,
    RecoveryTargetError,
    WalGapError,
)
from pytest_hokmdb.pitr.info import BackupSet, StanzaInfo
from pytest_hokmdb.pitr.points import RestorePoint, RestorePointLedger, create_restore_point
from pytest_hokmdb.pitr.recovery import RestoredCopy, restore_to_point
from pytest_hokmdb.pitr.standby import StandbyNotReady, StandbyState, standby_state
from pytest_hokmdb.pitr.wal import Lsn, Segment
from pytest_hokmdb.pitr.window import (
    RecoveryTarget,
    RecoveryWindow,
    ResolvedTarget,
    recovery_window,
    resolve_target,
)

__all__ = [
    "BackupSet",
    "CipherPassWrong",
    "Lsn",
    "PgBackRest",
    "PgBackRestError",
    "PitrSetup",
    "RecoveryFailed",
    "RecoveryTarget",
    "RecoveryTargetError",
    "RecoveryWindow",
    "ResolvedTarget",
    "RestoredCopy",
    "RestorePoint",
    "RestorePointLedger",
    "Segment",
    "StandbyLocation",
    "StandbyNotReady",
    "StandbyState",
    "StanzaInfo",
    "VerifyReport",
    "WalGapError",
    "archive_settings",
    "archiving_cluster",
    "create_restore_point",
    "find_pgbackrest",
    "recovery_window",
    "render_config",
    "resolve_setup",
    "resolve_target",
    "restore_to_point",
    "server_environment",
    "standby_state",
    "write_config",
]

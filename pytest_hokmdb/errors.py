"""Expected failures and the exit codes operators see.

Every failure an operator can cause or fix (bad config, missing secret, unreachable
host, refused operation) is a ``HokmdbError`` carrying its exit code, so front doors
(pytest, scripts) can print one clear line instead of a traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in README "Exit codes"; scripts and CI branch on these."""

    OK = 0
    CHECKS_FAILED = 1
    CONFIG_ERROR = 2
    CONNECTION_ERROR = 3
    REFUSED = 4
    CLUSTER_ERROR = 5
    DEPLOY_LOCKED = 6
    BACKUP_ERROR = 7
    CONTRACT_WAITS = 8
    ROLLED_BACK = 10
    ROLLBACK_FAILED = 11
    PRIMARY_CHANGED = 12
    INTERRUPTED = 130


class HokmdbError(Exception):
    """An expected failure with a message written for the operator."""

    exit_code: ExitCode = ExitCode.CHECKS_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ConfigError(HokmdbError):
    exit_code = ExitCode.CONFIG_ERROR


class ConnectionFailed(HokmdbError):
    exit_code = ExitCode.CONNECTION_ERROR


class Refused(HokmdbError):
    """A safety rule said no (production writes, destructive tests, seeding production)."""

    exit_code = ExitCode.REFUSED


class BackupError(HokmdbError):
    """A backup could not be taken, stored, verified or restored (corrupt, missing, wrong key, ...)."""

    exit_code = ExitCode.BACKUP_ERROR


class DeployLocked(HokmdbError):
    """Another deploy of the same database holds the deploy lock."""

    exit_code = ExitCode.DEPLOY_LOCKED


class ClusterError(HokmdbError):
    """The embedded PostgreSQL cluster could not be created, started or stopped."""

    exit_code = ExitCode.CLUSTER_ERROR

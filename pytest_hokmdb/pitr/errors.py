"""The failures of point-in-time recovery, each a ``BackupError`` (exit code 7) with one clear line.

pgBackRest reports a failure as ``ERROR: [code]: text`` on stderr, sometimes followed by
continuation lines full of undecryptable bytes (a wrong cipher pass makes it print the
ciphertext it could not parse). Operators need the one line and what to change, not that.
"""

from __future__ import annotations

import re

from pytest_hokmdb.errors import BackupError
from pytest_hokmdb.redaction import redact

_ERROR_RE = re.compile(r"^\s*(?:ERROR|ASSERT): \[(\d{3})\]: (.*)$")
_WARN_RE = re.compile(r"^\s*WARN: (.*)$")
_PRINTABLE_RE = re.compile(r"[^\x20-\x7e]+")
# What pgBackRest says when it cannot decrypt (or should not decrypt) an info file.
_UNDECRYPTABLE = ("FormatError: key/value found outside of section", "CryptoError", "unable to flush", "Salted__")


class PgBackRestError(BackupError):
    """A pgBackRest command failed; ``code`` is pgBackRest's error code (e.g. 29, 37, 82)."""

    def __init__(self, message: str, *, hint: str | None = None, code: int | None = None, command: str = "") -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.command = command


class CipherPassWrong(PgBackRestError):
    """The repository could not be decrypted: wrong, missing or unexpected cipher pass."""


class RecoveryTargetError(BackupError):
    """The requested recovery target cannot be reached (outside the window, unknown name, bad value)."""


class WalGapError(BackupError):
    """Recovery stopped before its target because WAL is missing from the repository."""


class RecoveryFailed(BackupError):
    """A restored copy could not be started or did not finish recovery."""


def printable(text: str) -> str:
    """``text`` with undecodable and control characters squeezed to a single '?'."""
    return _PRINTABLE_RE.sub("?", text)


def first_error_line(output: str) -> tuple[int | None, str]:
    """pgBackRest's ``ERROR: [code]: text`` line (code, text), else its last WARN, else its last line."""
    lines = [printable(line).rstrip() for line in output.splitlines() if line.strip()]
    for line in lines:
        match = _ERROR_RE.match(line)
        if match:
            return int(match[1]), match[2].strip()
    for line in reversed(lines):
        match = _WARN_RE.match(line)
        if match:
            return None, match[1].strip()
    return None, lines[-1].strip() if lines else "no output"


def looks_undecryptable(output: str) -> bool:
    return any(marker in output for marker in _UNDECRYPTABLE)


def explain(command: str, output: str, *, exit_code: int, cipher_type: str, log_hint: str) -> PgBackRestError:
    """One operator-facing error for a failed pgBackRest ``command`` from its output."""
    code, line = first_error_line(output)
    line = redact(line)
    if looks_undecryptable(output) or (code == 37 and "cipher-pass" in line):
        return cipher_error(command, cipher_type, code=code)
    hint = _standby_hint(line) or _HINTS.get(code or -1, log_hint)
    if code == 37 and "pg1-path" in line:
        hint = "the stanza is not configured for this server; check physical.stanza and physical.pg_data"
    if code == 55 and "info" in line:
        hint = "the stanza has not been created in this repository yet: run stanza-create first"
    label = f"[{code:03d}] " if code is not None else f"(exit {exit_code}) "
    return PgBackRestError(f"pgbackrest {command} failed: {label}{line}", hint=hint, code=code, command=command)


_STANDBY_REBUILD = "rebuild the standby from the primary (hokmdb topology start re-clones a missing one)"
_STANDBY_OR_PRIMARY = "or set physical.backup_standby to false to back up from the primary"
# What pgBackRest says about the standby of a backup-standby backup (2.45's db/helper.c, db/db.c),
# and what the operator should do about each.
_STANDBY_HINTS: tuple[tuple[str, str], ...] = (
    ("unable to find standby cluster",
     "pgBackRest could not reach the standby it copies from (pg2): start it (hokmdb topology start for the local "
     f"topology) and check physical.standby_pg_port and standby_pg_socket_dir, {_STANDBY_OR_PRIMARY}"),
    ("more than one primary cluster found",
     f"the standby (pg2) is not in recovery any more (promoted?): {_STANDBY_REBUILD}, {_STANDBY_OR_PRIMARY}"),
    ("standby replayed to",
     "the standby did not replay the WAL up to the backup's start in time (replay paused, streaming broken, or far "
     f"behind): pg_stat_wal_receiver on the standby says which; {_STANDBY_OR_PRIMARY}"),
    ("standby checkpoint",
     f"the standby is ahead of the primary, so it is not following it (another timeline or primary): {_STANDBY_REBUILD}"),
    ("replay lsn on the standby",
     f"pg2 is not a standby (promoted?): {_STANDBY_REBUILD}, {_STANDBY_OR_PRIMARY}"),
)


def _standby_hint(line: str) -> str | None:
    """The hint for a failure of the standby pgBackRest copies from; None for any other failure."""
    return next((hint for marker, hint in _STANDBY_HINTS if marker in line), None)


def cipher_error(command: str, cipher_type: str, *, code: int | None = None) -> CipherPassWrong:
    if cipher_type == "none":
        return CipherPassWrong(
            f"pgbackrest {command} failed: the repository is encrypted but physical.cipher_type is none, "
            "so it cannot be read",
            hint="set physical.cipher_type to aes-256-cbc and physical.cipher_pass to the repository's cipher pass",
            code=code,
            command=command,
        )
    return CipherPassWrong(
        f"pgbackrest {command} failed: the repository cannot be decrypted: the cipher pass is wrong or missing "
        "(or the repository was created without encryption)",
        hint="check physical.cipher_pass (and physical.cipher_type); it must be the pass the repository was created with",
        code=code,
        command=command,
    )


_ARCHIVING_HINT = (
    "the server is not archiving WAL into the repository: check its archive_command (physical settings applied?), "
    "pg_stat_archiver.last_failed_wal, and that the server was started with the pgBackRest secrets in its environment"
)

# Codes from pgBackRest's src/build/error/error.yaml.
_HINTS: dict[int, str] = {
    82: _ARCHIVING_HINT,  # archive-timeout: a WAL segment was not archived in time
    87: "the server runs with archive_mode=off; apply the archiving settings and restart it",  # archive-disabled
    68: "the server's archive_command does not call pgbackrest archive-push for this stanza; apply the archiving "
    "settings",  # archive-command-invalid
    44: "this repository's stanza belongs to another server (system identifier differs); give each server its own "
    "physical.stanza",  # archive-mismatch
    51: "this repository's stanza belongs to another server (system identifier differs); give each server its own "
    "physical.stanza",  # backup-mismatch
    58: "the stanza's recorded server differs from the one configured; check physical.pg_data and pg_port",  # db-mismatch
    56: "pgBackRest could not connect to PostgreSQL over its socket; check physical.pg_port, pg_socket_dir and pg_user",
    50: "another pgBackRest command holds the stanza's lock; wait for it to finish",  # lock-acquire
    75: "the repository holds no usable backup yet: take a full backup first",  # backup-set-invalid
    40: "the restore directory is not empty; restores always go into a new directory",  # path-not-empty
    38: "a PostgreSQL server is running in the restore directory; restores always go into a new directory",  # pg-running
}

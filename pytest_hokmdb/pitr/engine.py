"""Running pgBackRest: stanza-create, check, backup, info, verify, expire, restore, repo-ls.

Every command runs as the server's OS account (pgBackRest must read the data directory
and write files the server will own), with the config from ``conf`` and the secrets in
its environment only. A failure is one ``PgBackRestError`` naming pgBackRest's error
line and what to check, never a traceback or pgBackRest's multi-line dump.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pytest_hokmdb.cluster.archive.conf import PGBACKREST, command_environment, render_config, write_config
from pytest_hokmdb.cluster.archive.settings import PitrSetup
from pytest_hokmdb.errors import BackupError
from pytest_hokmdb.pitr.errors import PgBackRestError, cipher_error, explain, looks_undecryptable, printable
from pytest_hokmdb.pitr.info import BackupSet, BackupType, StanzaInfo
from pytest_hokmdb.pitr.wal import Segment, missing_segments
from pytest_hokmdb.redaction import redact

log = logging.getLogger("hokmdb.pitr")

# info's stanza status codes that still describe a readable repository.
_INFO_OK = {0: "ok", 2: "no valid backups"}
_ARCHIVE_FILE_RE = re.compile(r"^(?:.*/)?([0-9A-F]{24})-[0-9a-f]{40}(?:\.[a-z0-9]+)?$")
_VERIFY_HEADER_RE = re.compile(r"^\s*(archiveId: \S+|backup: \S+)")
_VERIFY_COUNT_RE = re.compile(r"(missing|checksum invalid|size invalid|other): (\d+)")


def find_pgbackrest() -> str:
    found = shutil.which(PGBACKREST)
    if found is None:
        raise BackupError(
            "pgbackrest is not installed; point-in-time recovery needs it",
            hint="run scripts/ensure-pgbackrest.sh as root (installs Debian's pgbackrest package)",
        )
    return found


@dataclass(frozen=True)
class ArchivedSegment:
    """One WAL segment in the repository and when it was stored there."""

    segment: Segment
    stored_at: datetime


@dataclass(frozen=True)
class VerifyReport:
    """``pgbackrest verify`` plus hokmdb's WAL continuity check (2.45's verify misses gaps)."""

    ok: bool
    problems: tuple[str, ...]
    output: str = field(repr=False, default="")

    def describe(self) -> str:
        return "repository verified: ok" if self.ok else "repository has problems: " + "; ".join(self.problems)


class PgBackRest:
    """pgBackRest for one stanza; writes the config file when created."""

    def __init__(self, setup: PitrSetup, *, executable: str | None = None) -> None:
        self.setup = setup
        self.executable = executable or find_pgbackrest()
        self._config = render_config(setup)
        write_config(setup)

    def _ensure_config(self) -> None:
        """Rewrite the config file if something else (another engine, an edit) changed it."""
        try:
            current = self.setup.config_file.read_text()
        except OSError:
            current = None
        if current != self._config:
            write_config(self.setup)

    # -- running -------------------------------------------------------------------

    def run(self, command: str, *options: str, timeout: float | None = 600, argument: str | None = None) -> str:
        """Run ``pgbackrest <options> <command> [argument]``; stdout on success, ``PgBackRestError`` otherwise."""
        setup = self.setup
        args = [self.executable, f"--config={setup.config_file}", f"--stanza={setup.stanza}", *options, command]
        if argument is not None:
            args.append(argument)
        self._ensure_config()
        started = time.monotonic()
        log.debug("running %s", " ".join(args[1:]))
        try:
            result = subprocess.run(
                args,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=command_environment(setup),
                cwd=setup.work_dir,
                timeout=timeout,
                **setup.user.subprocess_kwargs(),  # type: ignore[arg-type]
            )
        except subprocess.TimeoutExpired:
            raise PgBackRestError(
                f"pgbackrest {command} did not finish within {timeout:.0f}s",
                hint=f"pgBackRest's log: {setup.command_log(command)}",
                command=command,
            ) from None
        log.debug("pgbackrest %s finished in %.2fs (exit %s)", command, time.monotonic() - started, result.returncode)
        if result.returncode != 0:
            raise explain(
                command,
                result.stderr + "\n" + result.stdout,
                exit_code=result.returncode,
                cipher_type=setup.settings.cipher_type,
                log_hint=f"pgBackRest's log: {setup.command_log(command)}",
            )
        return result.stdout

    # -- commands --------------------------------------------------------------------

    def stanza_create(self) -> None:
        """Create the stanza in the repository (idempotent: an existing valid stanza is kept)."""
        self.run("stanza-create", timeout=300)
        log.info("pgBackRest stanza %s is ready", self.setup.stanza)

    def check(self, *, timeout: float = 300) -> None:
        """Prove the server archives into the repository: pgBackRest switches WAL and waits for it."""
        self.run("check", timeout=timeout)

    def info(self) -> StanzaInfo:
        """The stanza as the repository describes it; raises when the repository cannot be read."""
        output = self.run("info", "--output=json", timeout=300)
        try:
            # strict=False: an undecryptable repository makes pgBackRest embed raw bytes in the JSON.
            data = json.loads(output, strict=False)
        except ValueError:
            raise PgBackRestError(f"pgbackrest info returned unreadable output: {printable(output)[:200]}", command="info") from None
        entry = next((s for s in data if s.get("name") == self.setup.stanza), None) if isinstance(data, list) else None
        if entry is None:
            raise PgBackRestError(f"pgbackrest info did not describe stanza {self.setup.stanza}", command="info")
        info = StanzaInfo.from_json(entry)
        if info.status_code in _INFO_OK:
            return info
        detail = info.repo_status_message or info.status_message
        if looks_undecryptable(detail):
            raise cipher_error("info", self.setup.settings.cipher_type)
        if info.status_code == 1:
            raise PgBackRestError(
                f"stanza {self.setup.stanza} does not exist in the repository",
                hint="take a physical backup first (database/backup.py --type full creates the stanza), "
                "or check physical.stanza and the repository settings",
                code=info.status_code,
                command="info",
            )
        first = printable(detail.splitlines()[0]) if detail else info.status_message
        raise PgBackRestError(
            f"the repository of stanza {self.setup.stanza} cannot be read: {redact(first)}",
            hint=f"pgBackRest's log: {self.setup.command_log('info')}",
            code=info.status_code,
            command="info",
        )

    def backup(self, type: BackupType = "full", *, timeout: float | None = None) -> BackupSet:
        """Take a backup; returns it as ``info`` reports it (label, type, times, LSNs, sizes).

        pgBackRest turns a diff or incr into a full when no full exists yet; the returned
        ``type`` says what was taken.
        """
        before = {b.label for b in self.info().backups}
        started = time.monotonic()
        self.run("backup", f"--type={type}", timeout=timeout)
        new = [b for b in self.info().backups if b.label not in before]
        if not new:
            raise PgBackRestError(
                "pgbackrest backup reported success but no new backup is in the repository",
                hint=f"pgBackRest's log: {self.setup.command_log('backup')}",
                command="backup",
            )
        taken = new[-1]
        log.info("%s backup %s taken in %.1fs (%d bytes)", taken.type, taken.label, time.monotonic() - started, taken.size)
        return taken

    def expire(self) -> list[str]:
        """Apply the retention settings; returns the labels of the backups removed."""
        before = {b.label for b in self.info().backups}
        self.run("expire", timeout=1800)
        after = {b.label for b in self.info().backups}
        return sorted(before - after)

    def archived_segments(self, archive_id: str, *, directory: str | None = None) -> list[ArchivedSegment]:
        """WAL segments stored for ``archive_id`` (e.g. ``15-1``), oldest first.

        ``directory`` (a segment name's first 16 characters: timeline and high LSN bits)
        limits the listing to the up to 256 segments stored there.
        """
        path = f"archive/{self.setup.stanza}/{archive_id}" + (f"/{directory}" if directory else "")
        output = self.run("repo-ls", "--output=json", "--recurse", argument=path, timeout=600)
        try:
            entries = json.loads(output)
        except ValueError:
            raise PgBackRestError("pgbackrest repo-ls returned unreadable output", command="repo-ls") from None
        found: list[ArchivedSegment] = []
        for path, meta in entries.items():
            match = _ARCHIVE_FILE_RE.match(path)
            if match and meta.get("type") == "file":
                found.append(ArchivedSegment(Segment.parse(match[1]), datetime.fromtimestamp(int(meta.get("time", 0)), UTC)))
        return sorted(found, key=lambda a: a.segment)

    def wal_gaps(self, info: StanzaInfo | None = None) -> list[tuple[Segment, Segment]]:
        """Runs of WAL missing between the oldest backup's start and the newest archived segment."""
        info = info or self.info()
        archive = info.current_archive
        backups = info.usable_backups
        if archive is None or archive.max_wal is None or not backups:
            return []
        first = Segment.parse(backups[0].wal_start)
        last = Segment.parse(archive.max_wal)
        present = [a.segment for a in self.archived_segments(archive.archive_id)]
        return missing_segments(present, first, last)

    def verify(self) -> VerifyReport:
        """Check every backup and WAL file's checksum, and that no WAL is missing between them."""
        output = self.run("verify", "--output=text", "--verbose", timeout=None)
        problems: list[str] = []
        header = ""
        for line in output.splitlines():
            head = _VERIFY_HEADER_RE.match(line)
            if head:
                header = head[1].split(",")[0]
                continue
            bad = [f"{name} {count}" for name, count in _VERIFY_COUNT_RE.findall(line) if int(count)]
            if bad:
                problems.append(f"{header}: " + ", ".join(bad))
        if "status: error" in output and not problems:
            problems.append("pgbackrest verify reported an error: " + printable(output.strip().splitlines()[-1]))
        for first, last in self.wal_gaps():
            span = first.name if first == last else f"{first.name} to {last.name}"
            problems.append(f"WAL missing from the repository: {span} (LSN {first.start} to {last.end})")
        return VerifyReport(ok=not problems, problems=tuple(problems), output=output)

    def restore(
        self,
        pg_path: Path,
        *,
        backup_label: str,
        recovery_type: str,
        target: str,
        tablespace_dir: Path,
        timeout: float | None = None,
    ) -> None:
        """Restore ``backup_label`` into the new directory ``pg_path`` with a recovery target.

        The restored copy gets ``archive_mode=off`` written into its own config, so however
        it is started later it never pushes WAL into this repository (two servers archiving
        into one stanza would fork its history). Tablespaces go under ``tablespace_dir``
        instead of their original places, which belong to the running server.
        """
        self.run(
            "restore",
            f"--pg1-path={pg_path}",
            f"--set={backup_label}",
            f"--type={recovery_type}",
            f"--target={target}",
            "--target-action=promote",
            "--target-timeline=current",
            "--archive-mode=off",
            f"--tablespace-map-all={tablespace_dir}",
            timeout=timeout,
        )

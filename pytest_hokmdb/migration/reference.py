"""Reference catalogs: what a database migrated to a revision looks like, and how a live
database differs from it (the deploy's pre-flight drift check, and schema.matches_models
for a database held to an older revision).

The models describe the code's head only, so for a database at any revision the reference
is what a throwaway database migrated to that same revision looks like, compared through
``pytest_hokmdb.migration.snapshot`` (the full catalog as PostgreSQL renders it).

The reference is built once per distinct revision content in a throwaway embedded cluster
(the machine's PostgreSQL binaries) and cached by the SHA-256 of the revision files from
base to that revision plus the server's major version, under
``$HOKMDB_CACHE_DIR`` (default ``~/.cache/hokmdb/snapshots``). Without local binaries the
check falls back to the models (only valid at the models' head) or is skipped with its reason.

Left out of the comparison, because they belong to an environment rather than to the
schema: owners and ACLs (the live database is owned by its role, the reference by a
superuser), extensions, default privileges, schemas other than the application's, and the
tool's own ``hokmdb_*`` tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory

from pytest_hokmdb.db.engine import create_engine
from pytest_hokmdb.db.target import Target

log = logging.getLogger("hokmdb.migration.reference")

IGNORED_SECTIONS = frozenset({"extension", "default-privilege", "event-trigger"})
_ENV_TOKENS = re.compile(r"\s*\b(?:owner|acl)=\S+")
_TOOL = re.compile(r"(?:^|[.\s])hokmdb_")
_OPTIONS = re.compile(r"\boptions=\{([^}]*)\}")
# A table's autovacuum settings are the operator's tuning of a live database (the issue-31
# bench runs with aggressive ones; a DBA tunes ``moves``), not schema a revision owns: a
# deploy must not call them drift. Every other storage parameter (fillfactor, ...) still is.
_MAINTENANCE_OPTION = re.compile(r"^(?:toast\.)?(?:autovacuum_|vacuum_|log_autovacuum_min_duration)")


def _without_maintenance_options(detail: str) -> str:
    def keep(match: re.Match[str]) -> str:
        options = [o for o in match.group(1).split(",") if o and not _MAINTENANCE_OPTION.match(o.strip('"'))]
        return f"options={{{','.join(options)}}}" if options else ""

    return re.sub(r"\s{2,}", " ", _OPTIONS.sub(keep, detail))


@dataclass
class DriftResult:
    checked: bool
    items: list[str] = field(default_factory=list)
    reason: str = ""
    reference: str = ""


def cache_dir() -> Path:
    override = os.environ.get("HOKMDB_CACHE_DIR")
    base = Path(override) if override else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hokmdb"
    return base / "snapshots"


def revision_fingerprint(script: ScriptDirectory, revision: str) -> str:
    """Revision files from base to ``revision`` plus the snapshot code that renders them."""
    from pytest_hokmdb.migration import snapshot as snapshot_module

    digest = hashlib.sha256(Path(snapshot_module.__file__).read_bytes())
    for rev in reversed(list(script.iterate_revisions(revision, "base"))):
        digest.update(rev.revision.encode())
        digest.update(Path(rev.path).read_bytes())
    return digest.hexdigest()


def _normalise(snapshot: Any, schema: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, items in snapshot.sections:
        if name in IGNORED_SECTIONS:
            continue
        kept: dict[str, str] = {}
        for key, detail in items:
            if _TOOL.search(key):
                continue
            if name == "schema" and key != schema:
                continue
            if name != "schema" and not key.startswith(f"{schema}."):
                continue
            detail = _ENV_TOKENS.sub("", detail or "")
            kept[key] = (_without_maintenance_options(detail) if name == "relation" else detail).strip()
        out[name] = kept
    return out


def diff_normalised(expected: dict[str, dict[str, str]], live: dict[str, dict[str, str]]) -> list[str]:
    items: list[str] = []
    for section in sorted(set(expected) | set(live)):
        want, have = expected.get(section, {}), live.get(section, {})
        for key in sorted(want.keys() - have.keys()):
            items.append(f"missing {section} {key}")
        for key in sorted(have.keys() - want.keys()):
            items.append(f"unexpected {section} {key}: {have[key].splitlines()[0] if have[key] else ''}".rstrip(": "))
        for key in sorted(want.keys() & have.keys()):
            if want[key] != have[key]:
                items.append(f"{section} {key} is '{have[key].splitlines()[0] if have[key] else ''}', expected '{want[key].splitlines()[0] if want[key] else ''}'")
    return items


async def live_snapshot(target: Target) -> Any:
    from pytest_hokmdb.migration.snapshot import take_snapshot

    engine = create_engine(replace(target, read_only=True))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: take_snapshot(sync))
    finally:
        await engine.dispose()


async def _app_schema(target: Target) -> str:
    from pytest_hokmdb.db.catalog import app_schema
    from pytest_hokmdb.db.connect import connect

    conn = await connect(replace(target, read_only=True))
    try:
        return await app_schema(conn)
    finally:
        await conn.close()


def _build_reference(project_root: Path, revision: str) -> tuple[Any, str]:
    """Migrate a database in a throwaway embedded cluster to ``revision`` and snapshot it."""
    from pytest_hokmdb.aio import run_sync
    from pytest_hokmdb.db.scratch import create_database, start_throwaway_cluster
    from pytest_hokmdb.migrate import upgrade

    cluster = start_throwaway_cluster("reference")
    try:
        db = create_database(cluster, "hokmdb_reference")
        upgrade(db.url, revision, project_root=project_root)
        snapshot = run_sync(live_snapshot(db.target))
    finally:
        cluster.destroy()
    return snapshot, revision


async def reference_snapshot(project_root: Path, script: ScriptDirectory, revision: str) -> tuple[Any, str]:
    import asyncio
    import subprocess

    from pytest_hokmdb.cluster.binaries import find_bin_dir
    from pytest_hokmdb.migration.snapshot import CatalogSnapshot

    bin_dir = find_bin_dir(None)
    version_out = (
        await asyncio.to_thread(subprocess.run, [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30, check=False)
    ).stdout
    major = (re.findall(r"(\d+)(?:\.\d+)?", version_out) or ["0"])[0]
    key = f"{revision_fingerprint(script, revision)}-pg{major}"
    path = cache_dir() / f"{key}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        sections = tuple((name, tuple((k, d) for k, d in items)) for name, items in data["sections"])
        return CatalogSnapshot(sections), f"cached reference {path.name[:12]} (revision {revision})"
    snapshot, _version = await asyncio.to_thread(_build_reference, project_root, revision)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"revision": revision, "sections": [[n, [list(i) for i in items]] for n, items in snapshot.sections]}))
    tmp.replace(path)
    return snapshot, f"throwaway database migrated to {revision}"


Fallback = Callable[[str], Awaitable[DriftResult]]


async def check_drift(
    target: Target, project_root: Path, script: ScriptDirectory, revision: str | None, *, fallback: Fallback | None = None
) -> DriftResult:
    """Compare the live catalog with the reference for ``revision`` (None = never migrated).
    ``fallback(why)`` answers when no reference database can be built."""
    try:
        from pytest_hokmdb.migration import snapshot as _snapshot  # noqa: F401
    except ImportError:
        return DriftResult(False, reason="pytest_hokmdb.migration.snapshot is not available")
    schema = await _app_schema(target)
    live = _normalise(await live_snapshot(target), schema)
    if revision is None:
        leftovers = [f"unexpected {s} {k}" for s, items in live.items() if s != "schema" for k in items]
        return DriftResult(True, leftovers, reference="an empty database (no revision recorded)")
    try:
        reference, how = await reference_snapshot(project_root, script, revision)
    except Exception as exc:  # noqa: BLE001 - no binaries, cluster failure: fall back, say why
        why = f"no reference database could be built ({exc})"
        return await fallback(why) if fallback is not None else DriftResult(False, reason=why)
    expected = _normalise(reference, "public")
    if schema != "public":
        expected = {s: {k.replace("public.", f"{schema}.", 1) if s != "schema" else schema: v for k, v in items.items()} for s, items in expected.items()}
    return DriftResult(True, diff_normalised(expected, live), reference=how)

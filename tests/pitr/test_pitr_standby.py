"""pgBackRest backups copied from the streaming standby (``physical.backup_standby``).

One real local topology per module (an embedded development primary archiving into a
pgBackRest repository, a pg_basebackup standby on a slot, PgBouncer): a full backup taken
through ``backup.py`` is copied from the standby (hokmdb's record and pgBackRest's own
manifest say so) and restores to a copy holding the row written on the primary before
it; a stopped or paused standby is refused with one message and leaves the repository as
it was; a config without a standby is a configuration error before anything starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest
from helpers import PROJECT_ROOT, write_config_dir
from pitr_support import new_base_dir, physical_settings
from pydantic import ValidationError

from pytest_hokmdb.aio import run_sync
from pytest_hokmdb.backup.physical import list_physical, physical_engine, read_records, take_physical_backup
from pytest_hokmdb.cluster.topology import LocalTopology
from pytest_hokmdb.config import LoadedConfig, load_config
from pytest_hokmdb.config.model import PhysicalBackupSettings
from pytest_hokmdb.db.resolve import embedded_cluster_for
from pytest_hokmdb.errors import ExitCode
from pytest_hokmdb.pitr import (
    PgBackRestError,
    RecoveryTarget,
    StandbyNotReady,
    render_config,
    resolve_setup,
    restore_to_point,
)
from pytest_hokmdb.pitr.errors import explain

pytestmark = pytest.mark.xdist_group("pitr-standby")

STANZA = "hokm-standby"


def run_script(config_dir: Path, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """An operator's script on the development environment of ``config_dir``."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "database" / script), "--environment", "development",
         f"--config={config_dir}", *args],
        capture_output=True, text=True, env=_script_env(), timeout=timeout, check=False, cwd=PROJECT_ROOT,
    )


@dataclass
class StandbyEnv:
    base: Path
    config_dir: Path
    loaded: LoadedConfig
    topology: LocalTopology

    async def primary(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(**self.topology.primary.admin_connect_kwargs())  # type: ignore[arg-type]
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def standby(self, sql: str) -> object:
        conn = await asyncpg.connect(**self.topology.standby.admin_connect_kwargs())  # type: ignore[arg-type]
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()


def _script_env() -> dict[str, str]:
    env = {**os.environ, "HOKMDB_PROJECT_ROOT": str(PROJECT_ROOT), "CI": "true"}
    env.pop("HOKMDB_ENVIRONMENT", None)
    return env


def _physical(base: Path, **overrides: object) -> dict[str, object]:
    return {"engine": "pgbackrest", "stanza": STANZA, "repo_path": str(base / "repo"), "archive_timeout_s": 0,
            "recovery_timeout_s": 120, **overrides}


@pytest.fixture(scope="module")
def standby_env(pgbackrest_bin: str) -> Iterator[StandbyEnv]:
    """The development environment of a config directory: embedded primary archiving into the
    stanza, ``topology.local`` started beside it, ``physical.backup_standby`` on."""
    base = new_base_dir("hokmdb-pitr-standby")
    config_dir = base / "config"
    write_config_dir(
        config_dir, "development",
        embedded__data_dir=str(base / "cluster"), backup__local_dir=str(base / "backups"),
        deploy__log_dir=str(base / "logs"), physical=_physical(base, backup_standby=True), topology={"local": True},
    )
    loaded = load_config("development", config_dir, environ=_script_env())
    topology: LocalTopology | None = None
    try:
        run_sync(physical_engine(loaded))  # pgBackRest's config first, then the primary, archiving
        topology = LocalTopology(embedded_cluster_for(loaded))
        topology.start()
        env = StandbyEnv(base, config_dir, loaded, topology)
        run_sync(env.primary("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"))
        yield env
    finally:
        try:
            if topology is not None:
                topology.destroy()
        finally:
            embedded_cluster_for(loaded).destroy()
            shutil.rmtree(base, ignore_errors=True)


def _repository(env: StandbyEnv) -> tuple[list[str], list[str], dict[str, object]]:
    """What a backup writes: the stanza's backup directories, its info labels, hokmdb's records."""
    engine, _ = run_sync(physical_engine(env.loaded, start=False))
    backup_dir = env.base / "repo" / "backup" / STANZA
    entries = sorted(p.name for p in backup_dir.iterdir()) if backup_dir.exists() else []
    return entries, [b.label for b in engine.info().backups], read_records(engine.setup)


# --- settings and config file (no server) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"standby_pg_port": 5433}, "standby_pg_port set but backup_standby is false"),
        ({"backup_standby": True, "standby_pg_data": "/s/data"}, "needs standby_pg_data and standby_pg_socket_dir"),
        ({"backup_standby": True, "standby_pg_port": 5433}, "needs standby_pg_data and standby_pg_socket_dir"),
        ({"backup_standby": True, "pg_data": "/p", "standby_pg_data": "/p", "standby_pg_socket_dir": "/run"},
         "standby_pg_data is the primary's pg_data"),
    ],
)
def test_standby_settings_are_strict(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PhysicalBackupSettings.model_validate({"repo_path": "/r", **values})


def test_config_file_names_the_standby_as_pg2(tmp_path: Path) -> None:
    located = {"pg_data": str(tmp_path / "data"), "pg_socket_dir": str(tmp_path / "run"), "pg_port": 5499}
    standby = {"standby_pg_data": str(tmp_path / "standby"), "standby_pg_socket_dir": str(tmp_path / "srun"),
               "standby_pg_port": 5500}
    text = render_config(resolve_setup(physical_settings(tmp_path, cipher=False, backup_standby=True, **located, **standby)))
    stanza = text.split("[hokmdb]", 1)[1]
    for line in (f"pg1-path={tmp_path / 'data'}", "pg1-port=5499", f"pg2-path={tmp_path / 'standby'}", "pg2-port=5500",
                 f"pg2-socket-path={tmp_path / 'srun'}", "pg2-user=postgres", "backup-standby=y"):
        assert line in stanza.splitlines(), text
    without = render_config(resolve_setup(physical_settings(tmp_path, cipher=False, **located)))
    assert "pg2-" not in without and "backup-standby" not in without


def test_pgbackrest_standby_failures_are_explained() -> None:
    error = explain("backup", "WARN: unable to check pg2: [DbConnectError] ...\nERROR: [056]: unable to find standby "
                    "cluster - cannot proceed\n", exit_code=56, cipher_type="none", log_hint="log")
    assert error.message == "pgbackrest backup failed: [056] unable to find standby cluster - cannot proceed"
    assert error.hint is not None and "standby it copies from (pg2)" in error.hint and "backup_standby to false" in error.hint
    timeout = explain("backup", "ERROR: [082]: timeout before standby replayed to 0/5000028 - only reached 0/4000000\n"
                      "HINT: is replication running", exit_code=82, cipher_type="none", log_hint="log")
    assert timeout.hint is not None and "did not replay the WAL up to the backup's start" in timeout.hint


def test_backup_standby_without_a_standby_is_a_config_error(pgbackrest_bin: str) -> None:
    base = new_base_dir("hokmdb-pitr-nostandby")
    try:
        config_dir = base / "config"
        write_config_dir(config_dir, "development", embedded__data_dir=str(base / "cluster"),
                         physical=_physical(base, backup_standby=True))
        result = run_script(config_dir, "backup.py", "--type", "full")
        assert result.returncode == ExitCode.CONFIG_ERROR, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "physical.backup_standby is set but development has no standby for pgBackRest to copy the backup from" \
            in result.stderr, result.stderr
        assert "hint:" in result.stderr and "set physical.backup_standby to false" in result.stderr, result.stderr
        # Refused before any work: no cluster was created, no repository or pgBackRest config written.
        assert not (base / "cluster").exists() and not (base / "repo").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- a real topology -------------------------------------------------------------------------------


def test_full_backup_is_copied_from_the_standby_and_restores(standby_env: StandbyEnv) -> None:
    env = standby_env
    run_sync(env.primary("INSERT INTO markers (id) VALUES (1)"))
    taken = run_script(env.config_dir, "backup.py", "--type", "full", "--json")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    backup = json.loads(taken.stdout)
    standby_data = str(env.topology.standby.data_dir)
    assert backup["kind"] == "physical full", backup
    assert backup["source"].startswith(f"standby {standby_data} (port {env.topology.standby_port}): streaming"), backup
    # pgBackRest's own manifest (an unencrypted repository) says where the files came from.
    manifest = (env.base / "repo" / "backup" / STANZA / backup["id"] / "backup.manifest").read_text()
    assert "option-backup-standby=true" in manifest.splitlines()
    assert f"pg2-path={standby_data}" in (env.base / "cluster" / "pgbackrest" / "pgbackrest.conf").read_text()
    rows = {r["id"]: r for r in run_sync(list_physical(env.loaded))}
    assert rows[backup["id"]]["source"] == backup["source"], rows
    run_sync(env.primary("INSERT INTO markers (id) VALUES (2)"))  # after the backup: not in a copy of its end

    engine, _ = run_sync(physical_engine(env.loaded))
    copy = run_sync(restore_to_point(engine, RecoveryTarget.at_lsn(backup["lsn_stop"])))
    try:
        assert copy.backup.label == backup["id"]

        async def markers() -> list[int]:
            conn = await copy.admin_connect()
            try:
                return [r["id"] for r in await conn.fetch("SELECT id FROM markers ORDER BY id")]
            finally:
                await conn.close()

        assert run_sync(markers()) == [1]
    finally:
        copy.destroy()
    # The standby kept streaming through it all.
    assert run_sync(env.standby("SELECT status FROM pg_stat_wal_receiver")) == "streaming"


def test_stopped_standby_is_refused_and_nothing_is_written(standby_env: StandbyEnv) -> None:
    env = standby_env
    before = _repository(env)
    env.topology.standby.stop()
    try:
        with pytest.raises(StandbyNotReady) as refused:
            run_sync(take_physical_backup(env.loaded, "incr"))
        assert refused.value.exit_code == ExitCode.BACKUP_ERROR
        assert refused.value.message == (
            f"physical.backup_standby: the local topology's standby ({env.topology.standby.data_dir}) is not running")
        assert refused.value.hint is not None and "hokmdb topology start --environment development" in refused.value.hint
        # pgBackRest itself, asked without hokmdb's look first, fails as readably.
        engine, _ = run_sync(physical_engine(env.loaded, start=False))
        with pytest.raises(PgBackRestError) as failed:
            engine.backup("incr")
        assert "unable to find standby cluster" in failed.value.message
        assert failed.value.hint is not None and "standby it copies from (pg2)" in failed.value.hint
        assert _repository(env) == before
    finally:
        env.topology.start()


def test_paused_standby_is_refused_through_its_socket(standby_env: StandbyEnv) -> None:
    """A standby configured by location (``standby_pg_*``, as for a server hokmdb does not run)
    is looked at over its socket; paused replay would make pgBackRest wait, then fail."""
    env = standby_env
    physical = env.loaded.config.physical
    assert physical is not None
    standby = env.topology.standby
    located = physical.model_copy(update={"standby_pg_data": standby.data_dir, "standby_pg_port": standby.port,
                                          "standby_pg_socket_dir": standby.socket_dir})
    loaded = replace(env.loaded, config=env.loaded.config.model_copy(update={"physical": located}))
    before = _repository(env)
    run_sync(env.standby("SELECT pg_wal_replay_pause()"))
    try:
        with pytest.raises(StandbyNotReady) as refused:
            run_sync(take_physical_backup(loaded, "incr"))
        assert refused.value.message == (
            f"physical.backup_standby: the standby {standby.data_dir} (port {standby.port}) has its WAL replay paused "
            "(run SELECT pg_wal_replay_resume() on it)")
        assert _repository(env) == before
    finally:
        run_sync(env.standby("SELECT pg_wal_replay_resume()"))

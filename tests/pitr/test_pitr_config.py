"""The physical-backup settings, the pgBackRest config hokmdb writes from them, and the
routes its secrets take (environment only). No server needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pitr_support import CIPHER_PASS, ENSURE_SCRIPT, new_base_dir, physical_settings
from pydantic import ValidationError

from pytest_hokmdb.cluster.archive.conf import command_environment, secret_environment
from pytest_hokmdb.cluster.archive.server import ServerAccount
from pytest_hokmdb.config.model import HokmdbConfig, PhysicalBackupSettings
from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.pitr import (
    Lsn,
    PitrSetup,
    Segment,
    archive_settings,
    render_config,
    resolve_setup,
    write_config,
)
from pytest_hokmdb.pitr.errors import explain
from pytest_hokmdb.pitr.wal import missing_segments
from pytest_hokmdb.redaction import redact

S3_SECRET = "S3-secret-Vb7-key-0932"


def _setup(base: Path, **overrides: object) -> PitrSetup:
    settings = physical_settings(
        base, cipher=True, pg_data=str(base / "data"), pg_socket_dir=str(base / "run"), pg_port=5499, **overrides
    )
    return resolve_setup(settings)


def _s3(**overrides: object) -> PhysicalBackupSettings:
    values: dict[str, object] = {
        "repo_s3_bucket": "hokm-wal",
        "repo_s3_endpoint": "minio.internal:9000",
        "repo_s3_region": "eu-west-1",
        "repo_s3_key": "AKIAHOKM",
        "repo_s3_key_secret": S3_SECRET,
        "repo_s3_uri_style": "path",
        "cipher_type": "aes-256-cbc",
        "cipher_pass": CIPHER_PASS,
    }
    values.update(overrides)
    return PhysicalBackupSettings.model_validate(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"repo_path": "/r", "cipher_type": "aes-256-cbc"}, "cipher_type aes-256-cbc needs cipher_pass"),
        ({"repo_path": "/r", "cipher_pass": "x" * 10}, "cipher_pass is set but cipher_type is none"),
        ({}, "set repo_path (a directory) or repo_s3_bucket (an S3 bucket)"),
        ({"repo_path": "/r", "repo_s3_bucket": "b"}, "set repo_path or repo_s3_bucket, not both"),
        ({"repo_s3_bucket": "b", "repo_s3_region": "r"}, "an S3 repository also needs repo_s3_endpoint, repo_s3_key, repo_s3_key_secret"),
        ({"repo_path": "/r", "retention_fulll": 2}, "Extra inputs are not permitted"),
        ({"repo_path": "/r", "stanza": "has space"}, "String should match pattern"),
        ({"repo_path": "/r", "cipher_type": "aes-256-cbc", "cipher_pass": ""}, "cipher_type aes-256-cbc needs cipher_pass"),
    ],
)
def test_settings_are_strict(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PhysicalBackupSettings.model_validate(values)


def test_config_secrets_include_the_cipher_pass_and_s3_secret() -> None:
    data = {
        "environment": "testing",
        "database": {"name": "hokm_test", "user": "hokm_app"},
        "embedded": {},
        "physical": _s3().model_dump(mode="json") | {"cipher_pass": CIPHER_PASS, "repo_s3_key_secret": S3_SECRET},
    }
    config = HokmdbConfig.model_validate(data)
    assert CIPHER_PASS in config.secrets() and S3_SECRET in config.secrets()
    assert CIPHER_PASS not in repr(config) and S3_SECRET not in repr(config)


def test_a_server_hokmdb_does_not_run_needs_its_locations() -> None:
    data = {
        "environment": "testing",
        "database": {"host": "db.internal", "name": "hokm_test", "user": "hokm_app"},
        "physical": {"repo_path": "/var/lib/pgbackrest"},
    }
    with pytest.raises(ValidationError, match="physical: pg_data, work_dir, pg_socket_dir default to the embedded"):
        HokmdbConfig.model_validate(data)
    with pytest.raises(ConfigError, match="default to the embedded cluster's, and there is none"):
        resolve_setup(PhysicalBackupSettings(repo_path=Path("/r")))


def test_config_file_is_private_complete_and_free_of_secrets() -> None:
    base = new_base_dir("hokmdb-pitr-conf")
    try:
        setup = _setup(base)
        path = write_config(setup)
        text = path.read_text()
        assert path == base / "pgbackrest" / "pgbackrest.conf"
        assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_uid == setup.user.uid
        for directory in (setup.work_dir, setup.log_dir, setup.lock_dir, setup.spool_dir):
            assert directory.stat().st_mode & 0o777 == 0o700 and directory.stat().st_uid == setup.user.uid
        for line in (
            f"repo1-path={base / 'repo'}",
            "repo1-type=posix",
            "repo1-cipher-type=aes-256-cbc",
            "repo1-retention-full=2",
            "process-max=2",
            "compress-type=lz4",
            f"log-path={base / 'pgbackrest' / 'log'}",
            f"lock-path={base / 'pgbackrest' / 'lock'}",
            f"spool-path={base / 'pgbackrest' / 'spool'}",
            "[hokmdb]",
            f"pg1-path={base / 'data'}",
            "pg1-port=5499",
            f"pg1-socket-path={base / 'run'}",
            "pg1-user=postgres",
        ):
            assert line in text.splitlines(), line
        assert CIPHER_PASS not in text and "cipher-pass" not in text and "/var/log" not in text
        # Rewriting is atomic and leaves no temporary files behind.
        write_config(setup)
        assert sorted(p.name for p in setup.work_dir.iterdir()) == ["lock", "log", "pgbackrest.conf", "spool"]
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_s3_config_names_the_bucket_and_the_secrets_go_to_the_environment(tmp_path: Path) -> None:
    settings = _s3(pg_data=str(tmp_path / "d"), pg_socket_dir=str(tmp_path / "s"), work_dir=str(tmp_path / "w"))
    setup = resolve_setup(settings)
    text = render_config(setup)
    for line in (
        "repo1-type=s3",
        "repo1-path=/pgbackrest",
        "repo1-s3-bucket=hokm-wal",
        "repo1-s3-endpoint=minio.internal",
        "repo1-storage-port=9000",
        "repo1-s3-region=eu-west-1",
        "repo1-s3-uri-style=path",
        "repo1-storage-verify-tls=y",
    ):
        assert line in text.splitlines(), line
    assert S3_SECRET not in text and "AKIAHOKM" not in text and CIPHER_PASS not in text
    assert secret_environment(setup) == {
        "PGBACKREST_REPO1_CIPHER_PASS": CIPHER_PASS,
        "PGBACKREST_REPO1_S3_KEY": "AKIAHOKM",
        "PGBACKREST_REPO1_S3_KEY_SECRET": S3_SECRET,
    }
    with pytest.raises(ConfigError, match="pgBackRest only talks to S3 over TLS"):
        render_config(resolve_setup(settings.model_copy(update={"repo_s3_endpoint": "http://minio:9000"})))


def test_command_environment_drops_the_callers_pgbackrest_and_libpq_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGBACKREST_REPO1_PATH", "/somewhere/else")
    monkeypatch.setenv("PGPASSWORD", "not-for-pgbackrest")
    env = command_environment(_setup(tmp_path))
    assert "PGBACKREST_REPO1_PATH" not in env and "PGPASSWORD" not in env
    assert env["PGBACKREST_REPO1_CIPHER_PASS"] == CIPHER_PASS


def test_archive_settings_push_every_segment_into_the_stanza(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    settings = archive_settings(setup)
    assert settings == {
        "archive_mode": "on",
        "archive_command": f"pgbackrest --config={setup.config_file} --stanza=hokmdb archive-push %p",
        "archive_timeout": "0",
        "wal_level": "replica",
        "max_wal_senders": "3",
    }
    assert CIPHER_PASS not in str(settings)
    with pytest.raises(ConfigError, match="contains characters that archive_command cannot carry unquoted"):
        _setup(tmp_path / "with space")


def test_server_account_carries_the_secrets_without_showing_them(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    user = setup.user
    account = ServerAccount(user.name, user.uid, user.gid, user.home, user.switches, extra_env=(("PGBACKREST_REPO1_CIPHER_PASS", CIPHER_PASS),))
    assert account.env()["PGBACKREST_REPO1_CIPHER_PASS"] == CIPHER_PASS
    assert CIPHER_PASS not in repr(account)


def test_pgbackrest_errors_become_one_line_without_ciphertext(tmp_path: Path) -> None:
    # Every pgBackRest command runs with a PitrSetup, which registers the cipher pass as a
    # secret; without one here the last assertion held only when an earlier test in the same
    # worker had made one (it failed when run alone).
    _setup(tmp_path)
    garbage = "\x8e1\x05oKo\xd0V\x7f\x18\xbc\xd3_\x0f>"
    output = (
        "ERROR: [029]: unable to load info file '/r/backup/hokmdb/backup.info' or '/r/backup/hokmdb/backup.info.copy':\n"
        f"       FormatError: key/value found outside of section at line 1: {garbage}\n"
        "       HINT: has a stanza-create been performed?\n"
    )
    error = explain("backup", output, exit_code=29, cipher_type="aes-256-cbc", log_hint="log")
    assert error.message == (
        "pgbackrest backup failed: the repository cannot be decrypted: the cipher pass is wrong or missing "
        "(or the repository was created without encryption)"
    )
    timeout = explain(
        "check",
        "ERROR: [082]: WAL segment 000000010000000000000005 was not archived before the 60000ms timeout\n"
        "       HINT: check the archive_command to ensure that all options are correct\n",
        exit_code=82,
        cipher_type="none",
        log_hint="log",
    )
    assert timeout.message == (
        "pgbackrest check failed: [082] WAL segment 000000010000000000000005 was not archived before the 60000ms timeout"
    )
    assert timeout.code == 82 and "archive_command" in (timeout.hint or "")
    missing = explain("info", "ERROR: [037]: info command requires option: repo1-cipher-pass\n", exit_code=37,
                      cipher_type="aes-256-cbc", log_hint="log")
    assert "cipher pass is wrong or missing" in missing.message
    assert redact(f"x {CIPHER_PASS} y") == "x *** y"


def test_lsns_and_segments() -> None:
    lsn = Lsn.parse("1/3000050")
    assert str(lsn) == "1/3000050" and lsn == 0x103000050
    segment = Segment.parse("000000010000000100000003")
    assert segment == Segment.containing(lsn, 1)
    assert (str(segment.start), str(segment.end), segment.next().name) == ("1/3000000", "1/4000000", "000000010000000100000004")
    assert Segment.parse("0000000100000000000000FF").next().name == "000000010000000100000000"
    present = [Segment(1, n) for n in (2, 3, 5, 8)]
    gaps = missing_segments(present, Segment(1, 2), Segment(1, 8))
    assert [(a.number, b.number) for a, b in gaps] == [(4, 4), (6, 7)]
    with pytest.raises(ValueError, match="is not a WAL position"):
        Lsn.parse("3000050")


def test_ensure_script_is_safe_to_run_twice(pgbackrest_bin: str) -> None:
    for _ in range(2):
        result = subprocess.run([str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    assert Path(pgbackrest_bin).is_file()

"""pgBackRest's config file, the server settings that archive into it, and the secrets' route.

The config file lives in hokmdb's private directory (0700, owned by the server account;
the file 0600) together with pgBackRest's logs, locks and spool, so nothing lands in
``/etc/pgbackrest`` or ``/var/log/pgbackrest`` and nothing is owned by root.

Secrets never enter the file or any command line. pgBackRest reads every option from a
``PGBACKREST_<OPTION>`` environment variable too, so hokmdb passes the cipher pass and
the S3 keys that way: to the pgBackRest commands it runs, and to the PostgreSQL server
whose ``archive_command`` runs ``archive-push`` (see ``server_environment``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from pytest_hokmdb.cluster.archive.settings import PitrSetup, shell_safe
from pytest_hokmdb.cluster.process import environment_for
from pytest_hokmdb.errors import ConfigError

PGBACKREST = "pgbackrest"
CIPHER_PASS_ENV = "PGBACKREST_REPO1_CIPHER_PASS"
S3_KEY_ENV = "PGBACKREST_REPO1_S3_KEY"
S3_KEY_SECRET_ENV = "PGBACKREST_REPO1_S3_KEY_SECRET"


def _yn(value: bool) -> str:
    return "y" if value else "n"


def _s3_endpoint(endpoint: str) -> tuple[str, int | None]:
    """pgBackRest wants a bare host (TLS always) and the port apart."""
    parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parsed.scheme != "https":
        raise ConfigError(
            f"physical.repo_s3_endpoint {endpoint!r} is not https; pgBackRest only talks to S3 over TLS",
            hint="give the endpoint as host[:port] (https is implied)",
        )
    if not parsed.hostname:
        raise ConfigError(f"physical.repo_s3_endpoint {endpoint!r} has no host")
    return parsed.hostname, parsed.port


def render_config(setup: PitrSetup) -> str:
    """The config file's text: repository, retention, logging into the private dir, the stanza."""
    s = setup.settings
    lines = [
        "# Written by hokmdb from the physical settings; edit the hokmdb config instead.",
        "# Secrets are not in this file: hokmdb passes them to pgBackRest in its environment.",
        "[global]",
    ]
    if s.repo_path is not None:
        lines += ["repo1-type=posix", f"repo1-path={s.repo_path}"]
    else:
        assert s.repo_s3_bucket and s.repo_s3_endpoint and s.repo_s3_region
        host, port = _s3_endpoint(s.repo_s3_endpoint)
        lines += [
            "repo1-type=s3",
            f"repo1-path={s.repo_s3_path}",
            f"repo1-s3-bucket={s.repo_s3_bucket}",
            f"repo1-s3-endpoint={host}",
            f"repo1-s3-region={s.repo_s3_region}",
            f"repo1-s3-uri-style={s.repo_s3_uri_style}",
            f"repo1-storage-verify-tls={_yn(s.repo_s3_verify_tls)}",
        ]
        if port is not None:
            lines.append(f"repo1-storage-port={port}")
    lines += [f"repo1-cipher-type={s.cipher_type}", f"repo1-retention-full={s.retention_full}"]
    if s.retention_diff is not None:
        lines.append(f"repo1-retention-diff={s.retention_diff}")
    lines += [
        f"process-max={s.process_max}",
        f"compress-type={s.compress_type}",
        f"start-fast={_yn(s.start_fast)}",
        f"log-path={setup.log_dir}",
        f"lock-path={setup.lock_dir}",
        f"spool-path={setup.spool_dir}",
        "log-level-console=warn",
        "log-level-stderr=warn",
        "log-level-file=info",
        "",
        "# A restored copy's server log then names every WAL segment it fetched or could not find.",
        "[global:archive-get]",
        "log-level-console=info",
        "",
        f"[{setup.stanza}]",
        f"pg1-path={setup.pg_data}",
        f"pg1-port={setup.pg_port}",
        f"pg1-socket-path={setup.socket_dir}",
        f"pg1-user={s.pg_user}",
    ]
    lines += _standby_lines(setup)
    return "\n".join(lines) + "\n"


def _standby_lines(setup: PitrSetup) -> list[str]:
    """pg2 and ``backup-standby`` when backups are copied from the standby.

    pgBackRest tells primary from standby by asking each server, starts and stops the backup
    on the primary (whose archive_command keeps pushing the WAL), waits until the standby has
    replayed up to the backup's start and copies the replicated files from it. The other
    commands need only the primary (``stanza-create`` and ``check`` warn when pg2 is down), so
    archiving, restore points and restores do not depend on the standby being up.
    """
    standby = setup.standby
    if standby is None:
        return []
    return [
        "",
        "# Backups copy the data files from pg2, the streaming standby (physical.backup_standby).",
        f"pg2-path={standby.pg_data}",
        f"pg2-port={standby.port}",
        f"pg2-socket-path={standby.socket_dir}",
        f"pg2-user={setup.settings.pg_user}",
        "backup-standby=y",
    ]


def secret_environment(setup: PitrSetup) -> dict[str, str]:
    """The secrets as pgBackRest's environment variables (empty for an unencrypted posix repository)."""
    s = setup.settings
    env: dict[str, str] = {}
    if s.cipher_pass is not None:
        env[CIPHER_PASS_ENV] = s.cipher_pass.get_secret_value()
    if s.repo_s3_key is not None:
        env[S3_KEY_ENV] = s.repo_s3_key.get_secret_value()
    if s.repo_s3_key_secret is not None:
        env[S3_KEY_SECRET_ENV] = s.repo_s3_key_secret.get_secret_value()
    return env


def command_environment(setup: PitrSetup) -> dict[str, str]:
    """The environment of a pgBackRest command hokmdb runs.

    Built fresh (``environment_for``): no inherited ``PGBACKREST_*`` or libpq ``PG*`` variable
    (pgBackRest gives environment variables precedence over the config file, so a stray one in
    the operator's shell would silently point a restore at another repository), and none of the
    operator's other secrets (a restored server runs with this environment).
    """
    return environment_for(setup.user, **secret_environment(setup))


def write_config(setup: PitrSetup) -> Path:
    """Create the private directory and (re)write the config file atomically; returns its path.

    Written on every engine start, so a changed port or setting always reaches pgBackRest;
    the rename keeps a concurrently running ``archive-push`` from reading half a file.
    """
    work = setup.work_dir
    parent = work.parent
    parent.mkdir(parents=True, exist_ok=True)
    if not setup.user.can_enter(parent):
        raise ConfigError(
            f"physical.work_dir {work}: the server account {setup.user.name} cannot enter {parent}",
            hint="choose a work_dir under a directory that account can traverse (not under /root)",
        )
    setup.own(work, 0o700)
    for sub in (setup.log_dir, setup.lock_dir, setup.spool_dir):
        setup.own(sub, 0o700)
    repo = setup.settings.repo_path
    if repo is not None and not repo.exists():
        setup.own(repo, 0o750)
    text = render_config(setup)
    fd, tmp = tempfile.mkstemp(prefix=".pgbackrest-", suffix=".conf", dir=work)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        if setup.user.switches:
            os.chown(tmp, setup.user.uid, setup.user.gid)
        os.replace(tmp, setup.config_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return setup.config_file


def archive_command(setup: PitrSetup) -> str:
    config = shell_safe(setup.config_file, "the pgBackRest config path")
    return f"{PGBACKREST} --config={config} --stanza={setup.stanza} archive-push %p"


def archive_settings(setup: PitrSetup) -> dict[str, str]:
    """postgresql.conf settings that archive every WAL segment into the stanza.

    Usable as ``EmbeddedCluster(settings=...)`` (merge with the cluster's own); changing
    ``archive_mode`` or ``wal_level`` needs a server restart. The server must also have
    ``server_environment(setup)`` in its environment when the repository is encrypted or
    on S3.
    """
    return {
        "archive_mode": "on",
        "archive_command": archive_command(setup),
        "archive_timeout": str(setup.settings.archive_timeout_s),
        "wal_level": "replica",
        "max_wal_senders": "3",
    }

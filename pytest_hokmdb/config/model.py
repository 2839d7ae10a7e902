"""The typed shape of ``database/config/<environment>.json``.

Unknown keys are errors (``extra="forbid"``) so a typo cannot silently fall back to a
default on production. Secrets are ``SecretStr`` so that printing a config object never
shows them.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

EnvironmentName = Literal["development", "testing", "staging", "production"]
ENVIRONMENTS: tuple[str, ...] = ("development", "testing", "staging", "production")
PROTECTED_ENVIRONMENTS: frozenset[str] = frozenset({"staging", "production"})
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
TLS_MODES: frozenset[str] = frozenset({"require", "verify-ca", "verify-full"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # "${VAR:-}" interpolates to "", which for optional settings means "not set".
        return None if value == "" else value


class DatabaseSettings(_Strict):
    host: str | None = Field(None, description="Server host; unset means the embedded cluster")
    port: int = Field(5432, ge=1, le=65535)
    name: str
    user: str
    password: SecretStr | None = None
    sslmode: SslMode = "prefer"
    sslrootcert: Path | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    statement_timeout_ms: int = Field(30_000, ge=0)
    lock_timeout_ms: int = Field(1_000, ge=0)
    application_name: str = "hokmdb"
    # The monitoring connection: checks that need more than the application role may see
    # (pg_hba_file_rules, other roles' sessions, replication state) run as this role, a member
    # of pg_monitor with the grants README "Monitoring connection" lists. Unset on an embedded
    # cluster: the hokm_monitor role its setup creates.
    monitor_user: str | None = Field(None, description="role with pg_monitor for the checks the app role may not run")
    monitor_password: SecretStr | None = None
    # The owner role: runs migrations (deploy, rollback, alembic), seeds, and owns the schema's
    # objects; ``user`` (the game's role) then only reads and writes rows through grants. Unset
    # on an embedded cluster: the hokm_owner role its setup creates. Unset on another server:
    # ``user`` migrates, which staging and production deploys refuse.
    owner_user: str | None = Field(None, description="role that runs migrations and owns the objects")
    owner_password: SecretStr | None = None


class EmbeddedSettings(_Strict):
    """The PostgreSQL cluster hokmdb starts itself (development and testing only)."""

    enabled: bool = True
    data_dir: Path = Path(".hokmdb/clusters/default")
    bin_dir: Path | None = None
    port: int | None = Field(None, ge=1, le=65535)
    os_user: str | None = Field(None, description="Account the server runs as when hokmdb runs as root")


class PoolSettings(_Strict):
    min_size: int = Field(1, ge=0)
    max_size: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> PoolSettings:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is larger than max_size ({self.max_size})")
        return self


class BackupSettings(_Strict):
    """Logical backups (pg_dump), their storage, encryption and verification."""

    required_before_deploy: bool = False
    max_age_h: float | None = Field(
        None, gt=0, description="hokmdb runbook daily: the newest backup must be younger (and verified); unset: not judged",
    )
    from_standby: bool = Field(
        False, description="dump from a standby of the topology (topology.standbys / topology.local), not the primary",
    )
    local_dir: Path = Path("database/backups")
    s3_bucket: str | None = None
    s3_prefix: str = "hokmdb"
    s3_endpoint_url: str | None = Field(None, description="for S3-compatible stores (MinIO, Ceph, moto)")
    s3_region: str | None = None
    s3_sse: Literal["AES256", "aws:kms"] | None = Field(None, description="server-side encryption requested on upload")
    s3_kms_key_id: str | None = None
    s3_checksum: Literal["when_supported", "when_required"] = Field(
        "when_required", description="botocore request/response checksum mode; when_required suits S3-compatible stores"
    )
    s3_multipart_threshold_mb: int = Field(64, ge=5)
    s3_multipart_chunk_mb: int = Field(16, ge=5)
    s3_max_attempts: int = Field(5, ge=1, le=20, description="per request, botocore's standard retry mode")
    admin_user: str | None = Field(None, description="a role with CREATEDB for restores (the app role has none)")
    admin_password: SecretStr | None = None
    encryption_key: SecretStr | None = Field(None, description="age identity (AGE-SECRET-KEY-...) or passphrase")
    encryption_key_file: Path | None = None
    compression_level: int = Field(3, ge=0, le=22)
    restore_jobs: int = Field(2, ge=1, le=64)
    verify_after_backup: Literal["none", "quick", "full"] = "quick"
    retention_days: int = Field(7, ge=1)
    retention_count: int = Field(10, ge=1)


class PhysicalBackupSettings(_Strict):
    """Physical backups and WAL archiving with pgBackRest, for point-in-time recovery.

    Secrets (``cipher_pass``, ``repo_s3_key``/``repo_s3_key_secret``) never reach
    pgBackRest's config file or command line: hokmdb hands them over in its environment.
    """

    engine: Literal["pgbackrest"] = "pgbackrest"
    stanza: str = Field("hokmdb", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    work_dir: Path | None = Field(
        None,
        description="private directory (0700) for pgBackRest's config, logs, locks, spool and the restore-point "
        "ledger; unset: next to the embedded cluster's data directory",
    )
    pg_data: Path | None = Field(None, description="the server's data directory; unset: the embedded cluster's")
    pg_port: int | None = Field(None, ge=1, le=65535, description="unset: the embedded cluster's port")
    pg_socket_dir: Path | None = Field(None, description="unset: the embedded cluster's socket directory")
    pg_user: str = Field("postgres", description="superuser pgBackRest connects as over the socket")
    os_user: str | None = Field(None, description="account pgBackRest and the server run as when hokmdb runs as root")
    bin_dir: Path | None = Field(None, description="PostgreSQL server binaries for restored copies; unset: found")
    repo_path: Path | None = Field(None, description="a posix repository (local disk or mounted volume)")
    repo_s3_bucket: str | None = None
    repo_s3_endpoint: str | None = Field(None, description="host[:port] of the S3 endpoint, e.g. s3.eu-west-1.amazonaws.com")
    repo_s3_region: str | None = None
    repo_s3_path: str = Field("/pgbackrest", pattern=r"^/", description="the repository's path inside the bucket")
    repo_s3_key: SecretStr | None = None
    repo_s3_key_secret: SecretStr | None = None
    repo_s3_uri_style: Literal["host", "path"] = "host"
    repo_s3_verify_tls: bool = True
    cipher_type: Literal["none", "aes-256-cbc"] = "none"
    cipher_pass: SecretStr | None = None
    retention_full: int = Field(2, ge=1, le=9999)
    retention_diff: int | None = Field(None, ge=1, le=9999)
    process_max: int = Field(2, ge=1, le=64)
    compress_type: Literal["none", "gz", "lz4", "zst", "bz2"] = "lz4"
    start_fast: bool = Field(True, description="backups begin with an immediate checkpoint instead of waiting")
    archive_timeout_s: int = Field(60, ge=0, le=86400, description="server forces a WAL switch this often (0 = never)")
    recovery_timeout_s: float = Field(3600.0, gt=0, description="how long a restored copy may take to recover")
    backup_standby: bool = Field(
        False,
        description="pgBackRest copies the data files from the streaming standby (its backup-standby); the primary only "
        "starts and stops the backup and archives the WAL",
    )
    standby_pg_data: Path | None = Field(
        None, description="the standby's data directory, on this host; unset: the local topology's standby"
    )
    standby_pg_port: int | None = Field(None, ge=1, le=65535, description="unset: the local topology's standby port")
    standby_pg_socket_dir: Path | None = Field(None, description="unset: the local topology's standby socket directory")

    @model_validator(mode="after")
    def _consistent(self) -> PhysicalBackupSettings:
        self._standby_consistent()
        if self.repo_path is None and self.repo_s3_bucket is None:
            raise ValueError("set repo_path (a directory) or repo_s3_bucket (an S3 bucket) for the pgBackRest repository")
        if self.repo_path is not None and self.repo_s3_bucket is not None:
            raise ValueError("set repo_path or repo_s3_bucket, not both")
        if self.repo_s3_bucket is not None:
            missing = [
                name
                for name in ("repo_s3_endpoint", "repo_s3_region", "repo_s3_key", "repo_s3_key_secret")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"an S3 repository also needs {', '.join(missing)}")
        if self.cipher_type == "aes-256-cbc" and self.cipher_pass is None:
            raise ValueError("cipher_type aes-256-cbc needs cipher_pass (keep it in an environment variable)")
        if self.cipher_type == "none" and self.cipher_pass is not None:
            raise ValueError("cipher_pass is set but cipher_type is none: set cipher_type to aes-256-cbc or remove cipher_pass")
        return self

    def _standby_consistent(self) -> None:
        """The standby's location comes whole or not at all, and only with ``backup_standby``: a
        half-given location would silently mix a configured standby with the local topology's."""
        given = [name for name in ("standby_pg_data", "standby_pg_port", "standby_pg_socket_dir") if getattr(self, name) is not None]
        if given and not self.backup_standby:
            raise ValueError(f"{', '.join(given)} set but backup_standby is false: set backup_standby to true or remove them")
        if given and (self.standby_pg_data is None or self.standby_pg_socket_dir is None):
            raise ValueError(
                "a standby hokmdb does not run needs standby_pg_data and standby_pg_socket_dir (and standby_pg_port "
                "unless it is 5432); leave all three unset for the local topology's standby"
            )
        if self.standby_pg_data is not None and self.standby_pg_data == self.pg_data:
            raise ValueError("standby_pg_data is the primary's pg_data: point it at the standby's data directory")

    def secrets(self) -> list[str]:
        values = [self.cipher_pass, self.repo_s3_key_secret]
        return [v.get_secret_value() for v in values if v is not None]


class StandbySettings(_Strict):
    """A streaming standby of the database's primary: the smoke suite checks it and the deploy
    waits for it to replay each revision. The monitoring role connects to it (read-only)."""

    host: str
    port: int = Field(5432, ge=1, le=65535)
    name: str | None = Field(None, description="its application_name in the primary's pg_stat_replication")


class PgBouncerSettings(_Strict):
    """The game's connection pooler. The smoke suite reads its pools from the admin console as
    ``admin_user`` (listed in PgBouncer's stats_users or admin_users)."""

    host: str
    port: int = Field(6432, ge=1, le=65535)
    admin_user: str
    admin_password: SecretStr | None = None
    database: str | None = Field(None, description="the pool's database name; default database.name")


class PatroniSettings(_Strict):
    """A Patroni-managed cluster: the deploy, the smoke suite and backups find the current leader
    through Patroni's REST API instead of trusting database.host/port."""

    rest_urls: list[str] = Field(min_length=1, description="each member's REST API, e.g. http://db1:8008")
    expected_members: int = Field(2, ge=1, description="members the smoke suite expects running")


class TopologySettings(_Strict):
    """What stands between the game and its data: standbys and PgBouncer. Absent: a single server.

    ``local`` (development and testing): hokmdb runs the topology itself (``hokmdb topology
    start``) and its endpoints come from it. ``true``: the embedded cluster as primary, a
    ``pg_basebackup`` standby and PgBouncer. ``"patroni"``: two Patroni-managed nodes with a
    one-node etcd, and PgBouncer in front of the current leader.
    """

    local: bool | Literal["patroni"] = Field(
        False, description='true: primary + pg_basebackup standby + PgBouncer; "patroni": two Patroni nodes, etcd, PgBouncer'
    )
    standbys: list[StandbySettings] = Field(default_factory=list)
    pgbouncer: PgBouncerSettings | None = None
    patroni: PatroniSettings | None = None
    replay_timeout_s: float = Field(
        60.0, gt=0, description="after each revision the deploy waits this long for every standby to replay it"
    )
    max_slot_retained_bytes: int = Field(
        1024 * 1024 * 1024, gt=0, description="WAL a replication slot may hold back on the primary"
    )
    max_pool_wait_s: float = Field(1.0, gt=0, description="longest a client may have waited for a server connection")
    synchronous_replication: bool = Field(
        False, description="commits must wait for a standby (synchronous_standby_names set, a standby attached as sync)",
    )


class DeploySettings(_Strict):
    """How deploy.py and rollback.py move a database between revisions."""

    require_approval: bool | None = Field(None, description="default: production only")
    lock_wait_s: float = Field(30.0, ge=0, description="how long a second deploy waits for the deploy lock")
    migration_statement_timeout_ms: int = Field(0, ge=0, description="0 = none (index builds can be long)")
    lock_retry_budget_s: float = Field(60.0, ge=0, description="total time spent retrying revisions that hit lock_timeout")
    lock_retry_base_delay_s: float = Field(0.5, gt=0)
    concurrent_wait_s: float = Field(
        600.0, ge=0, description="how long a revision that blocks no game write (CREATE/DROP INDEX CONCURRENTLY, "
        "VALIDATE CONSTRAINT) waits for its lock and for older transactions; 0: database.lock_timeout_ms as for any other"
    )
    transition_window_s: float = Field(
        60.0, ge=0, description="how long the deploy watches for statements of the old release before a contract "
        "revision, and of the new release before a rollback undoes an expand ([[tool.hokmdb.migrations.transitions]]); "
        "cover the old release's quietest minute",
    )
    statement_stats_database: str = Field(
        "postgres", min_length=1, description="the database where pg_stat_statements is created, if not in the "
        "application's own (its view shows every database's statements); read with the monitoring role",
    )
    max_downtime_s: float | None = Field(
        None, gt=0, description="bound on the total time the deploy may hold (or wait for) locks that block the game's "
        "writes; the shipped staging and production configs set it",
    )
    backfill_batch_size: int = Field(1000, ge=1, description="rows of an online backfill's first committed batch; "
                                     "quick batches grow up to 20 times this, slow ones halve")
    backfill_pause_ms: int = Field(10, ge=0, description="pause between an online backfill's batches")
    backfill_max_batch_ms: int = Field(200, gt=0, description="a slower batch halves the next one (throttling)")
    backfill_max_replica_lag_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="a backfill pauses while a standby has more WAL than this to replay (0: never)"
    )
    maintenance_pause_pooler: bool = Field(
        False, description="with --maintenance-mode, PAUSE the game's database in PgBouncer while migrating (always RESUMEd)",
    )
    pause_timeout_s: float = Field(10.0, gt=0, description="how long PAUSE may wait for the game's transactions to end")
    gate_suites: list[str] = Field(default_factory=lambda: ["smoke"])
    gate_timeout_s: float = Field(900.0, gt=0)
    log_dir: Path = Path("database/logs")
    allow_force: bool | None = Field(None, description="default: all but production")


class MetricsSettings(_Strict):
    """Where every smoke run's results go as Prometheus metrics: a textfile for node_exporter's
    textfile collector, a Pushgateway, or both. Neither set: no metrics."""

    textfile_dir: Path | None = Field(
        None, description="node_exporter's --collector.textfile.directory; hokmdb writes hokmdb_smoke_<env>.prom there",
    )
    pushgateway_url: str | None = Field(None, description="e.g. http://pushgateway:9091; pushed as job=<job>, environment=<env>")
    job: str = Field("hokmdb", min_length=1)
    push_timeout_s: float = Field(5.0, gt=0)

    @field_validator("pushgateway_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class NotificationSettings(_Strict):
    slack_webhook_url: SecretStr | None = None
    notify_on_success: bool = False
    notify_on_failure: bool = True
    critical_alerts: bool = False
    email_recipients: list[str] = Field(default_factory=list)
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = True
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    email_sender: str = "hokmdb@localhost"


class SeedSettings(_Strict):
    allowed: bool | None = Field(None, description="Default: allowed everywhere but production")
    players: int = Field(200, ge=4)
    games: int = Field(400, ge=0)
    random_seed: int = 20261124
    statement_timeout_ms: int = Field(
        0, ge=0, description="per statement while seeding, instead of database.statement_timeout_ms (an interactive "
        "budget a bulk COPY batch can exceed on a busy machine); 0 = none",
    )


class HotQuery(_Strict):
    """A query on the application's hot path, timed and explained by the smoke suite.

    ``params`` may use the ``$sample_*`` placeholders of the application profile (Hokm's:
    ``$sample_game_id`` / ``$sample_player_id``, from the newest game and its first
    participant), so the plan is realistic.
    """

    name: str
    sql: str
    params: list[str] = Field(default_factory=list)
    max_ms: float = Field(50.0, gt=0)
    expected_index: str | list[str] | None = Field(None, description="an index the plan must use, or a list of acceptable ones")
    index_since: str | None = Field(
        None, description="the alembic revision that creates expected_index: a database held to an older revision "
        "(after a rollback or a restore) is not expected to have it",
    )
    since: str | None = Field(
        None, description="the alembic revision that creates the tables/columns the SQL reads: a database held to an "
        "older revision does not run the query at all",
    )

    @property
    def expected_indexes(self) -> list[str]:
        if self.expected_index is None:
            return []
        return [self.expected_index] if isinstance(self.expected_index, str) else list(self.expected_index)


class Waiver(_Strict):
    """Accepting that one blocker/critical check cannot verify on this environment. A reason
    is required and shows in every report; an expiry makes the acceptance come back for review."""

    reason: str = Field(min_length=10, description="why not verifying this check is acceptable here")
    expires: date | None = Field(None, description="after this day the waiver no longer applies")

    @field_validator("reason")
    @classmethod
    def _real_reason(cls, value: str) -> str:
        if len(value.strip()) < 10:
            raise ValueError("a waiver needs a reason of at least 10 characters")
        return value.strip()

    def expired(self, today: date | None = None) -> bool:
        return self.expires is not None and (today or date.today()) > self.expires


class SmokeSettings(_Strict):
    """Thresholds of the post-deploy checks; defaults suit a healthy game server."""

    waivers: dict[str, Waiver] = Field(
        default_factory=dict,
        description="check name -> reason (and expiry) for accepting that a blocker/critical check cannot verify",
    )
    expected_replicas: int = Field(0, ge=0, description="streaming replicas the primary must have attached")

    check_statement_timeout_ms: int = Field(5_000, ge=100, description="per check, so a sick database cannot hang the gate")
    min_server_version_num: int = Field(150000, ge=90000)
    max_connect_s: float = Field(5.0, gt=0)
    max_latency_ms: float = Field(50.0, gt=0)
    require_ssl: bool | None = Field(None, description="default: on for staging and production")
    app_role_may_own_schema: bool = Field(
        False, description="a single-role setup: the application role may own the schema and its objects and run DDL",
    )
    app_role_may_truncate: bool = Field(False, description="the application truncates tables on purpose")
    require_crash_safety: bool = Field(
        True, description="fsync, full_page_writes and synchronous_commit must be on (development and testing turn "
        "it off: hokmdb's throwaway clusters run without them, for speed)",
    )
    require_data_checksums: bool | None = Field(
        None, description="data checksums must be on (initdb --data-checksums, or pg_checksums --enable on the stopped "
        "cluster), so a corrupted page is an error when it is read, not wrong data; default: staging and production",
    )
    password_expiry_days: float = Field(
        14.0, ge=0, description="a login role's password (VALID UNTIL) must not expire within this many days",
    )
    log_connections: bool | None = Field(None, description="expected value of log_connections; unset: not checked")
    min_cache_hit_ratio: float = Field(0.90, ge=0, le=1)
    cache_hit_min_reads: int = Field(10_000, ge=0, description="below this many block reads the ratio means nothing")
    cache_hit_min_age_s: float = Field(
        600.0, ge=0, description="statistics younger than this (server start or stats reset) describe a cold cache, not the server",
    )
    large_table_rows: int = Field(10_000, ge=0, description="a sequential scan above this size fails the plan check")
    hot_queries: list[HotQuery] | None = Field(
        None, description="queries on the application's hot path; default: the application profile's (none without one)",
    )
    pool_headroom: float = Field(0.2, ge=0, lt=1, description="share of max_connections that must stay free")
    long_transaction_s: float = Field(300.0, gt=0)
    idle_in_transaction_s: float = Field(60.0, gt=0)
    blocked_lock_s: float = Field(30.0, gt=0)
    advisory_lock_idle_s: float = Field(
        3600.0, gt=0, description="an advisory lock held by a session idle this long is left behind (a dead job's lock)",
    )
    advisory_lock_holders: list[str] = Field(
        default_factory=list, description="application_name values that hold advisory locks for ever on purpose "
        "(a leader election); their locks are listed, not failed",
    )
    row_security_tables: list[str] = Field(
        default_factory=list, description="tables of the application schema meant to have row-level security on; "
        "any other table with it on fails, and a listed table with it off fails",
    )
    public_schemas: list[str] = Field(
        default_factory=lambda: ["public"], description="schemas every role of the cluster may use (USAGE to PUBLIC)",
    )
    privileged_login_roles: list[str] = Field(
        default_factory=lambda: ["postgres"], description="login roles that may be SUPERUSER, CREATEROLE, CREATEDB "
        "or BYPASSRLS (the administrators); any other login role with one of them fails",
    )
    public_functions: list[str] = Field(
        default_factory=list, description="functions every role may execute, as schema.name (EXECUTE to PUBLIC)",
    )
    max_xid_age: int = Field(1_000_000_000, gt=0)
    max_replication_lag_s: float = Field(30.0, gt=0)
    max_replication_lag_bytes: int = Field(256 * 1024 * 1024, gt=0, description="WAL a replica may have left to replay")
    max_dead_tuple_ratio: float = Field(0.2, gt=0, le=1)
    dead_tuple_min_rows: int = Field(10_000, ge=0)
    max_vacuum_age_h: float = Field(168.0, gt=0, description="hot tables with changes must be vacuumed/analyzed this often")
    max_sequence_usage: float = Field(0.8, gt=0, le=1)
    integrity_window_days: float = Field(7.0, gt=0)
    integrity_sample: int = Field(10, ge=1, le=1000)
    integrity_max_games: int = Field(1000, ge=1, description="the window is further bounded to its newest N games")


class HokmdbConfig(_Strict):
    environment: EnvironmentName
    description: str | None = None
    database: DatabaseSettings
    embedded: EmbeddedSettings | None = None
    pool: PoolSettings = PoolSettings()
    backup: BackupSettings = BackupSettings()
    notifications: NotificationSettings = NotificationSettings()
    metrics: MetricsSettings = MetricsSettings()
    seed: SeedSettings = SeedSettings()
    smoke: SmokeSettings = SmokeSettings()
    deploy: DeploySettings = DeploySettings()
    physical: PhysicalBackupSettings | None = None
    topology: TopologySettings | None = None

    @model_validator(mode="after")
    def _environment_rules(self) -> HokmdbConfig:
        protected = self.environment in PROTECTED_ENVIRONMENTS
        if protected and self.database.sslmode not in TLS_MODES:
            raise ValueError(
                f"database.sslmode is {self.database.sslmode!r}, but {self.environment} requires TLS: "
                "use verify-full (recommended), verify-ca or require"
            )
        if protected and self.embedded is not None and self.embedded.enabled:
            raise ValueError(f"embedded: {self.environment} cannot use an embedded cluster; remove the section")
        if protected and self.database.host is None:
            raise ValueError(f"database.host: {self.environment} needs a server host")
        if self.environment == "production" and self.deploy.require_approval is False:
            raise ValueError("deploy.require_approval: production deploys always need approval; remove the key")
        if self.environment == "production" and self.deploy.allow_force:
            raise ValueError("deploy.allow_force: --force is never allowed on production; remove the key")
        if self.backup.encryption_key is not None and self.backup.encryption_key_file is not None:
            raise ValueError("backup: set encryption_key or encryption_key_file, not both")
        if self.physical is not None and not self.uses_embedded:
            unset = [name for name in ("pg_data", "work_dir", "pg_socket_dir") if getattr(self.physical, name) is None]
            if unset:
                raise ValueError(
                    f"physical: {', '.join(unset)} default to the embedded cluster's, but {self.environment} "
                    "uses a server hokmdb does not run; set them"
                )
        if self.topology is not None:
            if self.topology.local and not self.uses_embedded:
                raise ValueError("topology.local: hokmdb runs a local topology only beside its embedded cluster; "
                                 "list the real standbys and PgBouncer instead")
            if self.topology.local and (self.topology.standbys or self.topology.pgbouncer or self.topology.patroni):
                raise ValueError("topology: a local topology's standby, PgBouncer and Patroni are hokmdb's own; "
                                 "remove standbys/pgbouncer/patroni or set local to false")
            bouncer = self.topology.pgbouncer
            if bouncer is not None and (bouncer.host, bouncer.port) == (self.database.host, self.database.port):
                raise ValueError(
                    "database.host/port point at PgBouncer: the deploy's session-level locks and settings do not "
                    "survive a transaction-mode pooler; point database at the primary itself"
                )
        if self.deploy.maintenance_pause_pooler and (self.topology is None or not (self.topology.local or self.topology.pgbouncer)):
            raise ValueError("deploy.maintenance_pause_pooler: the environment has no PgBouncer to pause "
                             "(set topology.pgbouncer, or topology.local)")
        if self.environment == "production" and self.seed.allowed:
            raise ValueError("seed.allowed: production can never be seeded; remove the key or set it to false")
        return self

    @property
    def is_protected(self) -> bool:
        """Staging and production: sessions are read-only and destructive tests are refused."""
        return self.environment in PROTECTED_ENVIRONMENTS

    @property
    def approval_required(self) -> bool:
        if self.deploy.require_approval is not None:
            return self.deploy.require_approval
        return self.environment == "production"

    @property
    def force_allowed(self) -> bool:
        if self.environment == "production":
            return False
        return True if self.deploy.allow_force is None else self.deploy.allow_force

    @property
    def ssl_required(self) -> bool:
        return self.smoke.require_ssl if self.smoke.require_ssl is not None else self.is_protected

    @property
    def seeding_allowed(self) -> bool:
        if self.environment == "production":
            return False
        return True if self.seed.allowed is None else self.seed.allowed

    @property
    def uses_embedded(self) -> bool:
        return self.database.host is None and self.embedded is not None and self.embedded.enabled

    def secrets(self) -> list[str]:
        values = [
            self.database.password,
            self.database.monitor_password,
            self.database.owner_password,
            self.backup.encryption_key,
            self.backup.admin_password,
            self.notifications.slack_webhook_url,
            self.notifications.smtp_password,
            self.topology.pgbouncer.admin_password if self.topology and self.topology.pgbouncer else None,
        ]
        physical = self.physical.secrets() if self.physical is not None else []
        return [v.get_secret_value() for v in values if v is not None] + physical

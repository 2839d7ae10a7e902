"""The typed shape of ``database/config/<environment>.json``.

Unknown keys are errors (``extra="forbid"``) so a typo cannot silently fall back to a
default on production. Secrets are ``SecretStr`` so that printing a config object never
shows them.
"""

from __future__ import annotations

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
    def _ordered(self) -> "PoolSettings":
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is larger than max_size ({self.max_size})")
        return self


class BackupSettings(_Strict):
    required_before_deploy: bool = False
    local_dir: Path = Path("database/backups")
    s3_bucket: str | None = None
    s3_prefix: str = "hokmdb"
    s3_endpoint_url: str | None = None
    encryption_key: SecretStr | None = None
    retention_days: int = Field(7, ge=1)
    retention_count: int = Field(10, ge=1)


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


class HokmdbConfig(_Strict):
    environment: EnvironmentName
    description: str | None = None
    database: DatabaseSettings
    embedded: EmbeddedSettings | None = None
    pool: PoolSettings = PoolSettings()
    backup: BackupSettings = BackupSettings()
    notifications: NotificationSettings = NotificationSettings()
    seed: SeedSettings = SeedSettings()

    @model_validator(mode="after")
    def _environment_rules(self) -> "HokmdbConfig":
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
        if self.environment == "production" and self.seed.allowed:
            raise ValueError("seed.allowed: production can never be seeded; remove the key or set it to false")
        return self

    @property
    def is_protected(self) -> bool:
        """Staging and production: sessions are read-only and destructive tests are refused."""
        return self.environment in PROTECTED_ENVIRONMENTS

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
            self.backup.encryption_key,
            self.notifications.slack_webhook_url,
            self.notifications.smtp_password,
        ]
        return [v.get_secret_value() for v in values if v is not None]

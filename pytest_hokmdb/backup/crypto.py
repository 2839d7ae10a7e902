"""age encryption of backups through pyrage, decryptable by the stock ``age`` tool.

Two kinds of key (``BACKUP_ENCRYPTION_KEY`` or ``backup.encryption_key_file``):

* an **age X25519 identity** (``AGE-SECRET-KEY-1...``, made by ``age-keygen``): the dump is
  encrypted to its public recipient. By hand: ``age -d -i key.txt ID.dump.age > ID.dump``.
* a **passphrase**: pyrage encrypts with a passphrase only in memory, so the dump itself
  is encrypted to a fresh X25519 identity made for that backup, and that identity is
  encrypted with the passphrase (age's scrypt recipient, armored) into the manifest's
  ``encryption.wrapped_identity``. By hand::

      jq -r .encryption.wrapped_identity ID.manifest.json > id.age
      age -d -o id.txt id.age             # asks for the passphrase
      age -d -i id.txt ID.dump.age > ID.dump

Both are age v1 files (ChaCha20-Poly1305 in 64 KiB authenticated chunks), so a flipped
bit or a truncation is an authentication failure, never silently wrong data. The key is
never written anywhere; the manifest holds only the public recipient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage
from pyrage import passphrase as age_passphrase
from pyrage import x25519

from pytest_hokmdb.config import LoadedConfig
from pytest_hokmdb.errors import BackupError
from pytest_hokmdb.redaction import register_secret

IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
FORMAT = "age-v1"


@dataclass(frozen=True)
class BackupKey:
    kind: str  # "x25519" | "passphrase"
    secret: str = field(repr=False)
    source: str = "BACKUP_ENCRYPTION_KEY"

    # -- encryption ------------------------------------------------------------
    def new_recipient(self) -> tuple[Any, dict[str, Any]]:
        """The recipient to encrypt a new backup to, and the manifest's ``encryption`` entry."""
        if self.kind == "x25519":
            identity = x25519.Identity.from_str(self.secret)
            recipient = identity.to_public()
            return recipient, {
                "format": FORMAT,
                "tool": f"pyrage {_pyrage_version()}",
                "recipient_type": "x25519",
                "recipient": str(recipient),
                "key_source": self.source,
            }
        data_identity = x25519.Identity.generate()
        register_secret(str(data_identity))
        wrapped = age_passphrase.encrypt(str(data_identity).encode(), self.secret, armored=True).decode()
        recipient = data_identity.to_public()
        return recipient, {
            "format": FORMAT,
            "tool": f"pyrage {_pyrage_version()}",
            "recipient_type": "x25519-passphrase-envelope",
            "recipient": str(recipient),
            "wrapped_identity": wrapped,
            "wrapping": "age scrypt (passphrase), armored",
            "key_source": self.source,
        }

    # -- decryption ------------------------------------------------------------
    def identity_for(self, encryption: dict[str, Any], *, backup: str) -> Any:
        """The identity that decrypts a backup, or a ``BackupError`` saying the key is wrong."""
        kind = encryption.get("recipient_type")
        recipient = encryption.get("recipient", "?")
        if encryption.get("format") != FORMAT:
            raise BackupError(f"backup {backup}: unknown encryption format {encryption.get('format')!r}")
        if kind == "x25519":
            if self.kind != "x25519":
                raise BackupError(
                    f"wrong key for backup {backup}: it was encrypted to the age identity of {recipient}, "
                    f"but {self.source} is a passphrase",
                    hint="set BACKUP_ENCRYPTION_KEY to that AGE-SECRET-KEY-1... identity",
                )
            identity = x25519.Identity.from_str(self.secret)
            mine = str(identity.to_public())
            if mine != recipient:
                raise BackupError(
                    f"wrong key for backup {backup}: it was encrypted to {recipient}, "
                    f"but {self.source} is the identity of {mine}",
                    hint="use the key that was in force when the backup was taken",
                )
            return identity
        if kind == "x25519-passphrase-envelope":
            if self.kind != "passphrase":
                raise BackupError(
                    f"wrong key for backup {backup}: it was encrypted with a passphrase, "
                    f"but {self.source} is an age identity",
                    hint="set BACKUP_ENCRYPTION_KEY to the passphrase in force when the backup was taken",
                )
            try:
                text = age_passphrase.decrypt(str(encryption["wrapped_identity"]).encode(), self.secret).decode()
            except (pyrage.DecryptError, KeyError, ValueError, OSError):
                raise BackupError(
                    f"wrong key for backup {backup}: the passphrase in {self.source} does not open "
                    "the backup's wrapped identity",
                    hint="use the passphrase that was in force when the backup was taken",
                ) from None
            register_secret(text.strip())
            identity = x25519.Identity.from_str(text.strip())
            if str(identity.to_public()) != recipient:
                raise BackupError(f"backup {backup}: its wrapped identity does not match its recipient {recipient}")
            return identity
        raise BackupError(f"backup {backup}: unknown recipient type {kind!r}")


def _pyrage_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyrage")
    except PackageNotFoundError:  # pragma: no cover
        return "?"


def parse_key(text: str, source: str) -> BackupKey:
    """An age identity file (comments allowed, as ``age-keygen`` writes it) or a passphrase."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(IDENTITY_PREFIX):
            try:
                x25519.Identity.from_str(line)
            except Exception:
                raise BackupError(f"{source} looks like an age identity but is not a valid one") from None
            register_secret(line)
            return BackupKey("x25519", line, source)
    secret = text.strip("\r\n")
    if len(secret) < 12:
        raise BackupError(
            f"{source} is too short for a passphrase ({len(secret)} characters; at least 12)",
            hint="generate an identity with `age-keygen` and use it instead",
        )
    register_secret(secret)
    return BackupKey("passphrase", secret, source)


def load_key(loaded: LoadedConfig) -> BackupKey:
    settings = loaded.config.backup
    if settings.encryption_key is not None:
        return parse_key(settings.encryption_key.get_secret_value(), "BACKUP_ENCRYPTION_KEY (backup.encryption_key)")
    if settings.encryption_key_file is not None:
        path: Path = loaded.resolve(settings.encryption_key_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise BackupError(f"cannot read backup.encryption_key_file {path}: {exc.strerror}") from None
        return parse_key(text, f"key file {path}")
    raise BackupError(
        f"no backup encryption key for {loaded.config.environment}: backups are always encrypted",
        hint="set BACKUP_ENCRYPTION_KEY to an age identity (`age-keygen`) or a passphrase, "
        "or backup.encryption_key_file in the config",
    )

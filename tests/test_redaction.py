"""Secrets are masked in every shape they take in text."""

from __future__ import annotations

from pytest_hokmdb.db.target import Target
from pytest_hokmdb.redaction import MASK, redact, redact_mapping, register_secret


def test_url_password_is_masked() -> None:
    assert redact("postgresql://app:s3cr3t@db:5432/hokm") == f"postgresql://app:{MASK}@db:5432/hokm"
    assert redact("postgresql+asyncpg://u:p%40ss@h/d?x=1") == f"postgresql+asyncpg://u:{MASK}@h/d?x=1"


def test_keyword_password_is_masked() -> None:
    assert redact("host=db password=hunter22 user=app") == f"host=db password={MASK} user=app"
    assert redact("password='two words' dbname=x") == f"password={MASK} dbname=x"


def test_webhook_url_is_masked() -> None:
    text = "posting to https://hooks.slack.com/services/T000/B000/XXXXSECRET failed"
    assert "XXXXSECRET" not in redact(text)


def test_registered_secret_is_masked_anywhere() -> None:
    register_secret("a-registered-value-77")
    assert redact("driver said: bad token a-registered-value-77!") == f"driver said: bad token {MASK}!"


def test_mapping_masks_secret_named_keys() -> None:
    data = {"database": {"password": "x1", "host": "h"}, "notifications": {"slack_webhook_url": "https://e/x"}}
    assert redact_mapping(data) == {"database": {"password": MASK, "host": "h"}, "notifications": {"slack_webhook_url": MASK}}


def test_target_never_shows_its_password() -> None:
    target = Target(environment="staging", host="db", port=5432, dbname="hokm", user="app", password="tgt-pass-123")
    assert "tgt-pass-123" not in target.dsn()
    assert "tgt-pass-123" not in repr(target)
    assert "tgt-pass-123" not in str(target)
    assert "tgt-pass-123" in target.dsn(redacted=False)
    assert target.libpq_env()["PGPASSWORD"] == "tgt-pass-123"

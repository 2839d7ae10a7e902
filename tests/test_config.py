"""The environment config: interpolation, validation as a whole, and messages that name
the file, the key and the variable, without ever showing a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_config_dir

from pytest_hokmdb.config import load_config
from pytest_hokmdb.errors import ConfigError, ExitCode

SECRET = "pw-that-must-not-leak-42"


def _write(directory: Path, environment: str, data: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{environment}.json"
    path.write_text(json.dumps(data))
    return path


def _minimal(environment: str = "development", **database: object) -> dict:
    return {"environment": environment, "database": {"name": "hokm", "user": "app", **database}}


@pytest.mark.parametrize("environment", ["development", "testing"])
def test_shipped_embedded_configs_load_with_an_empty_environment(environment: str) -> None:
    loaded = load_config(environment, environ={})
    assert loaded.config.uses_embedded
    assert not loaded.config.is_protected


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_shipped_protected_configs_name_every_missing_secret(environment: str) -> None:
    suffix = environment.upper()
    with pytest.raises(ConfigError) as err:
        load_config(environment, environ={})
    text = str(err.value)
    assert err.value.exit_code == ExitCode.CONFIG_ERROR == 2
    assert f"{environment}.json" in text
    assert f"database.host: environment variable DB_HOST_{suffix} is not set" in text
    assert f"database.password: environment variable DB_PASSWORD_{suffix} is not set" in text
    assert "(2 problems)" in text


def test_shipped_production_config_requires_verified_tls() -> None:
    loaded = load_config("production", environ={"DB_HOST_PRODUCTION": "db", "DB_PASSWORD_PRODUCTION": SECRET})
    assert loaded.config.database.sslmode == "verify-full"
    assert loaded.config.is_protected
    assert not loaded.config.seeding_allowed
    assert SECRET not in repr(loaded.config)


def test_interpolation_defaults_and_process_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, "development", _minimal(host="${MY_HOST:-fallback}", port="${MY_PORT}", password="${MY_PW}"))
    loaded = load_config("development", path, environ={"MY_PORT": "6543", "MY_PW": SECRET})
    db = loaded.config.database
    assert (db.host, db.port) == ("fallback", 6543)
    assert db.password is not None and db.password.get_secret_value() == SECRET


def test_dollar_dollar_escapes_a_literal(tmp_path: Path) -> None:
    path = _write(tmp_path, "development", _minimal(application_name="cost$${X}"))
    assert load_config("development", path, environ={}).config.database.application_name == "cost${X}"


def test_env_file_fills_in_and_process_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "development", _minimal(host="${H}", name="${N}"))
    env_file = tmp_path / ".env.database"
    env_file.write_text("H=from-file\nN=file-db\n")
    monkeypatch.setenv("HOKMDB_ENV_FILE", str(env_file))
    loaded = load_config("development", path, environ={"N": "env-db"})
    assert loaded.config.database.host == "from-file"
    assert loaded.config.database.name == "env-db"


def test_unknown_key_wrong_type_and_missing_key_are_reported_together(tmp_path: Path) -> None:
    data = {"environment": "development", "database": {"user": "app", "prot": 5432, "port": "abc"}, "pool": {"max_size": 2, "min_size": 5}}
    path = _write(tmp_path, "development", data)
    with pytest.raises(ConfigError) as err:
        load_config("development", path, environ={})
    text = str(err.value)
    assert str(path) in text
    assert "database.prot: unknown key" in text
    assert "database.port: Input should be a valid integer" in text and "'abc'" in text
    assert "database.name: required key is missing" in text
    assert "min_size (5) is larger than max_size (2)" in text
    assert "(4 problems)" in text


def test_a_bad_interpolated_value_names_its_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, "development", _minimal(port="${DB_PORT}"))
    with pytest.raises(ConfigError, match=r"database.port: .*'5x'.* \[from \$\{DB_PORT\}\]"):
        load_config("development", path, environ={"DB_PORT": "5x"})


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, "development", _minimal(password={"nested": SECRET}))
    with pytest.raises(ConfigError) as err:
        load_config("development", path, environ={})
    assert "database.password" in str(err.value)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "allow"])
def test_staging_refuses_connections_without_tls(tmp_path: Path, sslmode: str) -> None:
    path = write_config_dir(tmp_path, "staging", database__sslmode=sslmode)
    with pytest.raises(ConfigError, match=f"database.sslmode is '{sslmode}', but staging requires TLS"):
        load_config("staging", path, environ={"DB_HOST_STAGING": "db", "DB_PASSWORD_STAGING": SECRET})


def test_production_can_never_allow_seeding(tmp_path: Path) -> None:
    path = write_config_dir(tmp_path, "production", seed={"allowed": True})
    with pytest.raises(ConfigError, match="production can never be seeded"):
        load_config("production", path, environ={"DB_HOST_PRODUCTION": "db", "DB_PASSWORD_PRODUCTION": SECRET})


def test_file_for_another_environment_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "staging", _minimal("development"))
    with pytest.raises(ConfigError, match="environment: says 'development' but the file is loaded for 'staging'"):
        load_config("staging", path, environ={})


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "development.json"
    path.write_text('{\n  "environment": "development",\n  oops\n}')
    with pytest.raises(ConfigError, match=r"development.json: not valid JSON: .* line 3"):
        load_config("development", path, environ={})


def test_missing_file_and_unknown_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("development", tmp_path, environ={})
    with pytest.raises(ConfigError, match="unknown environment 'prod'") as err:
        load_config("prod", environ={})
    assert "development, testing, staging, production" in str(err.value)


def test_stand_in_missing_checks_structure_without_secrets_and_names_them() -> None:
    loaded = load_config("production", environ={}, stand_in_missing=True)
    assert loaded.stood_in == ("DB_HOST_PRODUCTION", "DB_PASSWORD_PRODUCTION")
    assert loaded.config.database.sslmode == "verify-full"


def test_stand_in_missing_still_reports_real_mistakes(tmp_path: Path) -> None:
    path = write_config_dir(tmp_path / "tls", "staging", database__sslmode="disable")
    with pytest.raises(ConfigError, match="staging requires TLS"):
        load_config("staging", path, environ={}, stand_in_missing=True)
    path = write_config_dir(tmp_path / "types", "staging", pool={"max_size": "many"})
    with pytest.raises(ConfigError, match="pool.max_size: Input should be a valid integer"):
        load_config("staging", path, environ={}, stand_in_missing=True)


def test_config_check_command_exit_codes(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path as _Path

    hokmdb = str(_Path(sys.executable).parent / "hokmdb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    ok = subprocess.run([hokmdb, "config", "check", "--placeholders"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "production: ok" in ok.stdout and "placeholders for DB_HOST_PRODUCTION, DB_PASSWORD_PRODUCTION" in ok.stdout
    strict = subprocess.run([hokmdb, "config", "check", "--environment", "staging"], capture_output=True, text=True, env=env)
    assert strict.returncode == 2
    assert "DB_HOST_STAGING is not set" in strict.stderr and "Traceback" not in strict.stderr


def test_staging_and_production_ship_a_max_downtime() -> None:
    """The deploy's bound on write-blocking lock time is on where a game is played."""
    from pytest_hokmdb.config import load_config

    bounds = {}
    for name in ("development", "testing", "staging", "production"):
        loaded = load_config(name, stand_in_missing=True, environ={})
        bounds[name] = loaded.config.deploy.max_downtime_s
    assert bounds == {"development": None, "testing": None, "staging": 10.0, "production": 5.0}


def test_a_topology_is_validated_before_anything_connects(tmp_path: Path) -> None:
    """A deploy through PgBouncer loses its session lock; a local topology needs hokmdb's cluster."""
    data = _minimal("staging", host="db.internal", port=5432, sslmode="verify-full", password="x")
    data["topology"] = {"pgbouncer": {"host": "db.internal", "port": 5432, "admin_user": "stats"}}
    with pytest.raises(ConfigError) as bouncer:
        load_config("staging", _write(tmp_path / "a", "staging", data), environ={})
    assert "database.host/port point at PgBouncer" in str(bouncer.value)
    assert "point database at the primary itself" in str(bouncer.value)

    data["topology"] = {"local": True}
    with pytest.raises(ConfigError) as local:
        load_config("staging", _write(tmp_path / "b", "staging", data), environ={})
    assert "topology.local: hokmdb runs a local topology only beside its embedded cluster" in str(local.value)

    # Two Patronis for one server: the local one hokmdb runs and a configured REST API.
    mixed = _minimal("development")
    mixed["embedded"] = {"enabled": True}
    mixed["topology"] = {"local": "patroni", "patroni": {"rest_urls": ["http://127.0.0.1:8008"]}}
    with pytest.raises(ConfigError) as both:
        load_config("development", _write(tmp_path / "d", "development", mixed), environ={})
    assert "a local topology's standby, PgBouncer and Patroni are hokmdb's own" in str(both.value)
    assert "remove standbys/pgbouncer/patroni or set local to false" in str(both.value)

    data["topology"] = {"standbys": [{"host": "replica.internal"}],
                        "pgbouncer": {"host": "pool.internal", "admin_user": "stats", "admin_password": "s3cr3t-pool"}}
    loaded = load_config("staging", _write(tmp_path / "c", "staging", data), environ={})
    assert loaded.config.topology is not None and loaded.config.topology.pgbouncer is not None
    assert "s3cr3t-pool" in loaded.config.secrets()
    assert "s3cr3t-pool" not in repr(loaded.config)


def test_every_environment_variable_the_code_or_the_shipped_configs_read_is_in_the_readme() -> None:
    """Issue 20: HOKMDB_DEPLOY_ACTOR, HOKMDB_BACKUP_TMP and others were read but not documented.
    Reads are ``os.environ[...]``/``.get(...)``/``getenv(...)`` with a literal or a module
    constant, and ``${VAR}`` in database/config/*.json; the README names them in backticks
    (``DB_PASSWORD_DEV/_TEST/...`` counts for each suffix)."""
    import re

    from helpers import PROJECT_ROOT

    read: set[str] = set()
    for path in [*PROJECT_ROOT.glob("pytest_hokmdb/**/*.py"), *PROJECT_ROOT.glob("hokm_profile/**/*.py"),
                 *PROJECT_ROOT.glob("database/*.py"), PROJECT_ROOT / "migrations" / "env.py"]:
        text = path.read_text()
        constants = dict(re.findall(r'^([A-Z][A-Z0-9_]*)\s*=\s*"([A-Z][A-Z0-9_]+)"', text, re.MULTILINE))
        for name in re.findall(r'(?:environ\.get\(|environ\[|getenv\()\s*"([A-Z][A-Z0-9_]+)"', text):
            read.add(name)
        for const in re.findall(r'(?:environ\.get\(|environ\[|getenv\()\s*([A-Z][A-Z0-9_]+)\b', text):
            if const in constants:
                read.add(constants[const])
    for path in PROJECT_ROOT.glob("database/config/*.json"):
        read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", path.read_text()))
    # Not the user's to set: the OS's and pytest-xdist's, and the secrets hokmdb hands its own child process.
    internal = {"PATH", "HOME", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "HOKMDB_VERIFY_PASSWORD",
                "HOKMDB_VERIFY_MONITOR_PASSWORD"}
    readme = (PROJECT_ROOT / "README.md").read_text()
    documented = set(re.findall(r"`\$?([A-Z][A-Z0-9_]+)(?:=[^`]*)?`", readme))
    for base, suffixes in re.findall(r"`([A-Z][A-Z0-9_]+?)((?:/_[A-Z]+)+)`", readme):
        stem = base.rsplit("_", 1)[0]
        documented |= {base} | {f"{stem}{suffix}" for suffix in suffixes.split("/") if suffix}
    missing = sorted(read - internal - documented)
    assert not missing, f"read but not in README's configuration reference: {missing}"

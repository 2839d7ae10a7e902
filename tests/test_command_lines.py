"""Every command line takes the config path under both spellings: the scripts were written
with ``--db-config`` (pytest's own ``-c``/``--config-file`` is taken) and ``hokmdb`` with
``--config``, and a newcomer who learnt one met the other (issue 20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

HOKMDB = Path(sys.executable).parent / "hokmdb"
COMMANDS = {
    "deploy.py": [sys.executable, str(PROJECT_ROOT / "database" / "deploy.py")],
    "smoke_tests.py": [sys.executable, str(PROJECT_ROOT / "database" / "smoke_tests.py")],
    "backup.py": [sys.executable, str(PROJECT_ROOT / "database" / "backup.py")],
    "rollback.py restore": [sys.executable, str(PROJECT_ROOT / "database" / "rollback.py"), "restore"],
    "seed_data.py": [sys.executable, str(PROJECT_ROOT / "database" / "seed_data.py")],
    "hokmdb cluster": [str(HOKMDB), "cluster"],
    "hokmdb topology": [str(HOKMDB), "topology"],
    "hokmdb config": [str(HOKMDB), "config"],
    "hokmdb demo": [str(HOKMDB), "demo"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_config_path_option_has_both_spellings(name: str) -> None:
    proc = subprocess.run([*COMMANDS[name], "--help"], capture_output=True, text=True, timeout=60, check=False,
                          cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout and "--db-config" in proc.stdout, proc.stdout


def _rollback_args(*argv: str) -> object:
    from pytest_hokmdb.cli.rollback import _positional_forms, parser

    p = parser()
    args = p.parse_args(list(argv))
    _positional_forms(p, args)
    return args


def test_the_runbooks_forms_of_rollback_resolve_to_the_options() -> None:
    args = _rollback_args("emergency", "production", "players report lost games")
    assert (args.environment, args.reason) == ("production", "players report lost games")  # type: ignore[attr-defined]
    args = _rollback_args("emergency", "--environment", "staging", "bad deploy")
    assert (args.environment, args.reason) == ("staging", "bad deploy")  # type: ignore[attr-defined]
    args = _rollback_args("restore", "--environment", "testing", "backups/20261205T1200Z.dump.age")
    assert args.backup_file == "backups/20261205T1200Z.dump.age"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("argv", "message"), [
    (["emergency", "production"], 'emergency production: the reason is missing: emergency production "reason"'),
    (["emergency", "--environment", "staging", "production", "why"], "the environment is given twice (staging and production)"),
    (["emergency", "staging", "why", "and", "more"], 'give one reason, quoted'),
    (["emergency", "why"], "which environment?"),
    (["restore", "--environment", "testing", "--backup-file", "a.dump.age", "b.dump.age"], "the backup is given twice"),
])
def test_ambiguous_rollback_forms_are_usage_errors_before_anything_runs(argv: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "database" / "rollback.py"), *argv], capture_output=True,
                          text=True, timeout=60, check=False, cwd=PROJECT_ROOT, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_imports_no_driver_orm_or_migration_tool(name: str) -> None:
    """``--help`` and the quick commands start in well under a second because the drivers,
    SQLAlchemy, alembic, boto3 and the deploy machinery are imported where they are used
    (issue 20; seen: rollback.py --help at 0.8 s through deploy.orchestrator). Measured as
    ``python -X importtime`` reports it, not by a clock."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *COMMANDS[name][1:], "--help"] if COMMANDS[name][0] ==
                          sys.executable else [sys.executable, "-X", "importtime", *COMMANDS[name], "--help"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("asyncpg", "sqlalchemy", "alembic", "boto3", "psycopg")
                   or m.startswith("pytest_hokmdb.deploy.orchestrator"))
    assert not heavy, f"{name} --help imports {', '.join(heavy[:8])}"

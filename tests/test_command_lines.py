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

"""The migration suite on a project that is not Hokm: without a `metadata` key the model
drift tests fail saying what to set (they used to compare the project with Hokm's models);
with `metadata = false` they are skipped with that reason; and in neither run is any Hokm
module (models, rules, simulator) imported."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from test_broken_histories import write_project

RECORDER = '''
import json, os, sys


def pytest_sessionfinish(session):
    hokm = sorted(m for m in sys.modules if m == "hokm_profile" or m.startswith("hokm_profile."))
    with open(os.environ["HOKM_IMPORTS_FILE"], "w") as handle:
        json.dump(hokm, handle)
'''


def _run(pytester: pytest.Pytester, project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[pytest.RunResult, list[str]]:
    (project / "hokm_import_recorder.py").write_text(RECORDER)
    record = tmp_path / f"imports-{len(list(tmp_path.iterdir()))}.json"
    monkeypatch.setenv("HOKM_IMPORTS_FILE", str(record))
    monkeypatch.setenv("PYTHONPATH", str(project))
    result = pytester.runpytest_subprocess(
        "--hokmdb-migrations", f"--hokmdb-migrations-project={project}", "-k", "test_drift",
        "-p", "hokm_import_recorder",
        "-p", "no:cacheprovider", "-rfEs", "-q",
    )
    return result, json.loads(record.read_text())


def _pyproject(project: Path, metadata_line: str) -> None:
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [tool.hokmdb.migrations]
        alembic_ini = "alembic.ini"
        {metadata_line}
        """))


def test_without_a_metadata_key_the_drift_tests_fail_saying_what_to_set(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path / "shop")
    _pyproject(project, "")
    result, hokm = _run(pytester, project, monkeypatch, tmp_path)
    output = result.stdout.str()
    assert result.ret == 1, output
    assert "[tool.hokmdb.migrations] metadata is not set" in output
    assert 'metadata = "yourapp.models:metadata"' in output and "metadata = false" in output
    assert hokm == [], f"the suite imported Hokm's modules for another project: {hokm}"


def test_a_project_without_models_says_so_and_the_drift_tests_are_skipped(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path / "shop")
    _pyproject(project, "metadata = false")
    result, hokm = _run(pytester, project, monkeypatch, tmp_path)
    output = result.stdout.str()
    assert result.ret == 0, output
    assert "the project declares no models ([tool.hokmdb.migrations] metadata = false)" in output
    assert hokm == [], f"the suite imported Hokm's modules for another project: {hokm}"

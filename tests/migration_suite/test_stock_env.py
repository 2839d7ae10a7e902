"""The migration suite on projects made by ``alembic init``, their env.py unchanged.

A project's env.py is the one alembic's template wrote, with only ``target_metadata`` set,
as in most real repositories: it opens its own connection from ``sqlalchemy.url`` (the
sync template with psycopg; the async template with ``asyncio.run`` and asyncpg), and may
call ``fileConfig`` unguarded. The suite runs it as it is, on the throwaway database under
test, with ``pytest --hokmdb-migrations`` and only ``[tool.hokmdb.migrations]``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from test_broken_histories import failed_tests, failure_text, write_project


def _stock_project(root: Path, template: str, url: str, *, guard_file_config: bool = True) -> Path:
    """The shop's revisions and models in a project that ``alembic init -t <template>`` made."""
    shop = write_project(root / "shop-source")
    project = root / "shop"
    project.mkdir()
    command.init(Config(str(project / "alembic.ini")), str(project / "migrations"), template=template)
    ini = (project / "alembic.ini").read_text().replace("driver://user:pass@localhost/dbname", url)
    (project / "alembic.ini").write_text(ini)
    env = project / "migrations" / "env.py"
    text = env.read_text().replace("target_metadata = None", "import shop_models\ntarget_metadata = shop_models.metadata")
    if not guard_file_config:
        text = text.replace("if config.config_file_name is not None:\n    fileConfig(", "fileConfig(")
    env.write_text(text)
    for revision in (shop / "migrations" / "versions").glob("*.py"):
        (project / "migrations" / "versions" / revision.name).write_text(revision.read_text())
    for name in ("shop_models.py", "shop_data.py", "pyproject.toml"):
        (project / name).write_text((shop / name).read_text())
    return project


def _run(pytester: pytest.Pytester, project: Path) -> pytest.RunResult:
    """The suite without the lock-safety lint: the shop's history is not lock-safe on purpose
    (its own tests, test_lint_broken.py, cover the lint)."""
    return pytester.runpytest_inprocess("--hokmdb-migrations", f"--hokmdb-migrations-project={project}",
                                        "-k", "not test_revision_is_lock_safe", "-p", "no:cacheprovider", "-rfE", "-q")


def test_the_sync_template_env_py_runs_unchanged_even_with_an_unguarded_file_config(pytester: pytest.Pytester) -> None:
    project = _stock_project(pytester.path, "generic", "postgresql+psycopg://shop:secret@db.example.invalid/shop",
                             guard_file_config=False)
    assert "config.attributes" not in (project / "migrations" / "env.py").read_text()  # nothing of ours in it
    result = _run(pytester, project)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*passed*"])


def test_the_async_template_env_py_runs_unchanged(pytester: pytest.Pytester) -> None:
    project = _stock_project(pytester.path, "async", "postgresql+asyncpg://shop:secret@db.example.invalid/shop")
    assert "asyncio.run(run_async_migrations())" in (project / "migrations" / "env.py").read_text()
    result = _run(pytester, project)
    assert result.ret == 0, result.stdout.str()


def test_a_stock_env_py_still_fails_a_broken_revision(pytester: pytest.Pytester) -> None:
    """Running env.py's own connection is not a way around the checks: a downgrade that
    leaves a trace is caught the same way."""
    project = _stock_project(pytester.path, "generic", "postgresql+psycopg://shop:secret@db.example.invalid/shop")
    a2 = next((project / "migrations" / "versions").glob("a2_*.py"))
    a2.write_text(a2.read_text().replace(
        '    op.drop_constraint("ck_items_price_nonneg", "items", type_="check")\n    op.drop_column("items", "price")',
        '    op.drop_constraint("ck_items_price_nonneg", "items", type_="check")'))
    result = _run(pytester, project)
    assert "test_roundtrip.py::test_revision_round_trips[a2]" in failed_tests(result), result.stdout.str()
    text = failure_text(result, "test_revision_round_trips[a2]")
    assert "revision a2 (a2_shop.py): its downgrade (to a1) leaves a trace" in text, text

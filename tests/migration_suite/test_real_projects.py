"""The migration suite on two real alembic histories installed from PyPI, with configuration only.

Optuna 5.1.0 (``optuna/storages/_rdb/alembic``, 10 revisions) and buildbot 4.3.0
(``buildbot/db/migrations``, 9 revisions) are pinned test dependencies. Each runs through
``pytest --hokmdb-migrations`` from a wrapper project in ``real_projects/<name>/``: an
``alembic.ini`` whose ``script_location`` is the installed package's directory
(``package:path``) and a ``[tool.hokmdb.migrations]`` section. No file of either package is
copied or changed, and both env.py files run as shipped: each is alembic's stock template
that opens its own connection from ``sqlalchemy.url`` (``engine_from_config``); buildbot's
calls ``fileConfig(config.config_file_name)`` unguarded. Buildbot's first revision (059) is
an empty placeholder for the schema buildbot 3.4 made with ``Model.metadata.create_all``, so
that schema is its ``prerequisites`` (``buildbot-3.4.1-schema.sql``, generated from buildbot
3.4.1's own models: how is written at its top). Both MetaData live on a declarative class
(``BaseModel.metadata``, ``Model.metadata``), named as such in ``metadata``.

Every finding asserted below was checked by hand against the revision files (the comments
say why each is real); most are PostgreSQL's alone (enum types, DDL ordering, lock levels).
The ``*_own_alembic_ini_*`` tests run the same projects through the ini each package ships.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections import Counter
from importlib import metadata as distributions
from pathlib import Path

import pytest
from test_broken_histories import failed_tests, failure_text

# One worker runs them all: each project's suite runs once per process and every test reads it.
pytestmark = pytest.mark.xdist_group("real-projects")

REAL_PROJECTS = Path(__file__).resolve().parent / "real_projects"
PINNED = {"optuna": "5.1.0", "buildbot": "4.3.0"}  # pyproject.toml [project.optional-dependencies] test

# The alembic.ini each package ships beside its env.py (optuna's names sqlite:///alembic.db).
OWN_INI = {"optuna": "storages/_rdb/alembic.ini", "buildbot": "db/migrations/alembic.ini"}

_RUNS: dict[str, pytest.RunResult] = {}


def suite_run(pytester: pytest.Pytester, name: str, *, own_ini: bool = False) -> pytest.RunResult:
    """The whole suite on the wrapper project of ``name``, run once per process (each test
    below reads another part of the same report). ``own_ini``: the wrapper's pyproject.toml
    names the ini the package ships instead of the wrapper's alembic.ini."""
    key = f"{name} (own ini)" if own_ini else name
    if key not in _RUNS:
        # Found, not imported: pytester drops the modules a test imports, and numpy (optuna's)
        # cannot be imported twice in one process.
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            pytest.fail(f"{name}=={PINNED[name]} is not installed: it is a pinned test dependency "
                        "(make install, or pip install -e .[test])", pytrace=False)
        installed = distributions.version(name)
        assert installed == PINNED[name], (
            f"{name} {installed} is installed; these expectations are for the pinned {PINNED[name]}")
        project = pytester.path / name
        shutil.copytree(REAL_PROJECTS / name, project)
        if own_ini:
            (project / "alembic.ini").unlink()
            pyproject = project / "pyproject.toml"
            ini = Path(spec.origin).parent / OWN_INI[name]
            pyproject.write_text(pyproject.read_text().replace('alembic_ini = "alembic.ini"', f'alembic_ini = "{ini}"'))
        _RUNS[key] = pytester.runpytest_subprocess(
            "--hokmdb-migrations", f"--hokmdb-migrations-project={project}", "-p", "no:cacheprovider", "-rfEs", "-q",
            timeout=600,
        )
    return _RUNS[key]


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    return result.parseoutcomes()


def lint_findings(result: pytest.RunResult, revision: str) -> list[tuple[str, str]]:
    """``(rule, statement)`` per error finding of ``test_revision_is_lock_safe[revision]``
    (the statement is empty for a finding not tied to a SQL line)."""
    text = failure_text(result, f"test_revision_is_lock_safe[{revision}]")
    found = []
    for match in re.finditer(r"^revision \S+: \[([\w-]+)\][^\n]*\n(?:\s+at (?:offline|recorded) SQL line \d+: ([^\n]*))?",
                             text, re.MULTILINE):
        found.append((match.group(1), match.group(2) or ""))
    return found


def lint_failures(result: pytest.RunResult) -> set[str]:
    return {name.split("[")[1].rstrip("]") for name in failed_tests(result)
            if name.startswith("test_lint.py::test_revision_is_lock_safe[")}


def warned(result: pytest.RunResult) -> Counter[tuple[str, str]]:
    """``(revision, rule)`` of every ``MigrationLintWarning`` in the warnings summary."""
    text = result.stdout.str()
    assert "warnings summary" in text, text
    summary = text.split("warnings summary", 1)[1].split("-- Docs:", 1)[0]
    counts: Counter[tuple[str, str]] = Counter()
    for match in re.finditer(r"MigrationLintWarning: (?:revision (\S+): \[([\w-]+)\]|\[([\w-]+)\] revision (\S+) )", summary):
        if match.group(1):
            counts[(match.group(1), match.group(2))] += 1
        else:
            counts[(match.group(4), match.group(3))] += 1
    return counts


# --- optuna 5.1.0 ----------------------------------------------------------------------------

OPTUNA_FAILED = {
    "test_history.py::test_revision_has_a_real_downgrade[v2.4.0.a]",
    "test_upgrade.py::test_upgrade_from_base_to_head_in_one_go",
    "test_upgrade.py::test_downgrade_from_head_in_one_go",
    *(f"test_roundtrip.py::test_revision_round_trips[{r}]"
      for r in ("v0.9.0.a", "v2.4.0.a", "v2.6.0.a", "v3.0.0.a", "v3.0.0.b", "v3.0.0.c", "v3.0.0.d", "v3.2.0.a")),
    *(f"test_lint.py::test_revision_is_lock_safe[{r}]"
      for r in ("v1.2.0.a", "v1.3.0.a", "v2.4.0.a", "v2.6.0.a", "v3.0.0.b", "v3.0.0.c", "v3.0.0.d", "v3.2.0.a")),
    "test_drift.py::test_models_match_the_migrations_at_head",
    "test_drift.py::test_enum_labels_match_the_models",
}
STUDYDIRECTION_EXISTS = ('DuplicateObject: type "studydirection" already exists\n'
                         "  while running: CREATE TYPE studydirection AS ENUM ('NOT_SET', 'MINIMIZE', 'MAXIMIZE')")


def test_optuna_outcome_is_exactly_its_findings(pytester: pytest.Pytester) -> None:
    """Nothing errors (the drift tests load ``BaseModel.metadata`` and check the models'
    unnamed CHECK), nothing else fails, and every revision is tested."""
    result = suite_run(pytester, "optuna")
    assert failed_tests(result) == OPTUNA_FAILED, result.stdout.str()
    assert outcomes(result) == {"failed": 21, "passed": 28, "skipped": 2, "warnings": 54}, result.stdout.str()


def test_optuna_v2_4_0_a_cannot_upgrade_a_database_that_is_at_its_parent(pytester: pytest.Pytester) -> None:
    """Real: v2.4.0.a's ``op.create_table("study_directions", ...sa.Enum(..., name="studydirection"))``
    creates the enum type, which v0.9.0.a already created for ``studies.direction``. In one
    ``upgrade head`` it works only because alembic's DDL runner remembers the type from
    v0.9.0.a in the same command; a database created by optuna < 2.4 and upgraded later (a
    command of its own, as ``optuna storage upgrade`` does) fails on PostgreSQL. The suite's
    one-command vs stepwise comparison is what shows it; every revision above is untestable
    stepwise, and the lint cannot record v2.4.0.a's SQL either."""
    result = suite_run(pytester, "optuna")
    text = failure_text(result, "test_upgrade_from_base_to_head_in_one_go")
    assert "the database cannot be upgraded to v2.4.0.a: revision v2.4.0.a (v2.4.0.a.py): its upgrade() failed" in text
    assert STUDYDIRECTION_EXISTS in text, text
    assert STUDYDIRECTION_EXISTS in failure_text(result, "test_revision_round_trips[v2.4.0.a]")
    for later in ("v2.6.0.a", "v3.0.0.a", "v3.0.0.b", "v3.0.0.c", "v3.0.0.d", "v3.2.0.a"):
        text = failure_text(result, f"test_revision_round_trips[{later}]")
        assert f"revision {later} " in text and "cannot be tested: the database cannot be upgraded to v2.4.0.a" in text
    assert lint_findings(result, "v2.4.0.a") == [("offline-sql-unavailable", "")]
    text = failure_text(result, "test_revision_is_lock_safe[v2.4.0.a]")
    assert "No inspection system is available for object of type" in text  # it inspects the database
    assert "recording it online failed too" in text and 'type "studydirection" already exists' in text


def test_optuna_downgrades_that_do_not_undo(pytester: pytest.Pytester) -> None:
    """Real, all three:

    * v0.9.0.a's downgrade drops its tables but not the enum types ``studydirection`` and
      ``trialstate`` their columns made (``op.drop_table`` knows no columns): ``downgrade
      base`` leaves them, and the next ``upgrade`` fails creating them again;
    * v2.4.0.a's ``downgrade()`` is ``pass`` under ``# TODO(imamura): Implement downgrade``,
      while its upgrade moves data and drops three columns;
    * v3.0.0.c's downgrade ends with ``sa.Enum(IntermediateValueModel.FloatTypeEnum)``, an
      attribute the class does not have (it is ``TrialIntermediateValueType``): it raises
      AttributeError after dropping the column, so ``downgrade`` from head fails there.
    """
    result = suite_run(pytester, "optuna")
    text = failure_text(result, "test_revision_round_trips[v0.9.0.a]")
    assert "revision v0.9.0.a (v0.9.0.a.py): its downgrade (to base) leaves a trace" in text
    assert "+type public.studydirection: kind=e labels='NOT_SET', 'MINIMIZE', 'MAXIMIZE'" in text, text
    assert "+type public.trialstate: kind=e labels='RUNNING', 'COMPLETE', 'PRUNED', 'FAIL'" in text, text
    text = failure_text(result, "test_revision_has_a_real_downgrade[v2.4.0.a]")
    assert "[real-downgrade] revision v2.4.0.a (v2.4.0.a.py): downgrade() does nothing" in text
    text = failure_text(result, "test_downgrade_from_head_in_one_go")
    assert ("revision v3.0.0.c (v3.0.0.c.py): its downgrade() failed (downgrade to base): AttributeError: type object "
            "'IntermediateValueModel' has no attribute 'FloatTypeEnum'") in text, text


def test_optuna_models_differ_from_what_its_migrations_build(pytester: pytest.Pytester) -> None:
    """Real, at head (built by one ``upgrade head``):

    * ``trial_heartbeats`` (``TrialHeartbeatModel``) is created by no revision (optuna's
      storage adds it at start-up with ``create_all``; ``alembic upgrade head`` alone lacks it);
    * ``trial_values.trial_id`` is nullable as v0.9.0.a made it; the model says NOT NULL and
      no revision changed it;
    * v3.2.0.a names its index ``trials_study_id_key``; the model's ``index=True`` is
      ``ix_trials_study_id``;
    * v1.2.0.a meant to add ``WAITING`` to ``trialstate`` with ``alter_column(type_=Enum(...))``,
      which on PostgreSQL is ``ALTER COLUMN state TYPE trialstate``: the type is not changed,
      so a migrated database cannot store a waiting trial.

    The models' one CHECK (``version_info_id=1``, unnamed) is in the migrated schema."""
    result = suite_run(pytester, "optuna")
    text = failure_text(result, "test_models_match_the_migrations_at_head")
    assert "the models and the schema at head (v3.2.0.a) differ; alembic autogenerate would generate:" in text
    for operation in ("op.create_table('trial_heartbeats',",
                      "op.alter_column('trial_values', 'trial_id',\n               existing_type=sa.INTEGER(),\n"
                      "               nullable=False)",
                      "op.drop_index(op.f('trials_study_id_key'), table_name='trials')",
                      "op.create_index(op.f('ix_trials_study_id'), 'trials', ['study_id'], unique=False)"):
        assert operation in text, text
    assert len(re.findall(r"^    op\.", text, re.MULTILINE)) == 4, text
    text = failure_text(result, "test_enum_labels_match_the_models")
    assert text.strip().endswith(
        "enum type public.trialstate: the models list ['RUNNING', 'COMPLETE', 'PRUNED', 'FAIL', 'WAITING'], "
        "the migrated type has ['RUNNING', 'COMPLETE', 'PRUNED', 'FAIL']"), text
    assert "test_drift.py::test_check_constraints_match_the_models" not in failed_tests(result)


# Real lock hazards on a live optuna database (workers keep writing trials while a storage
# is upgraded). ALTER COLUMN ... TYPE takes ACCESS EXCLUSIVE on the table even where no
# rewrite follows (v1.2.0.a's same type, v2.6.0.a's varchar -> text, v3.0.0.b's float ->
# float(53)); DROP NOT NULL / DROP DEFAULT break optuna < 3.0 still writing or reading during a
# rolling upgrade; SET NOT NULL scans trial_values under that lock; the DELETEs change every
# matching row inside the DDL's transaction; the index on trials blocks writes while built.
OPTUNA_LINT = {
    "v1.2.0.a": [("changing-column-type", "ALTER TABLE trials ALTER COLUMN state TYPE trialstate")],
    "v1.3.0.a": [("unbatched-data-change",
                  "DELETE FROM trial_system_attributes WHERE trial_system_attributes.key = '_number'::VARCHAR")],
    "v2.4.0.a": [("offline-sql-unavailable", "")],
    "v2.6.0.a": [("changing-column-type", f"ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT")
                 for table, column in (("study_user_attributes", "value_json"), ("study_system_attributes", "value_json"),
                                       ("trial_user_attributes", "value_json"), ("trial_system_attributes", "value_json"),
                                       ("trial_params", "distribution_json"))],
    "v3.0.0.b": [
        ("changing-column-type", "ALTER TABLE trial_intermediate_values ALTER COLUMN intermediate_value TYPE FLOAT(53)"),
        ("ban-drop-not-null", "ALTER TABLE trial_intermediate_values ALTER COLUMN intermediate_value DROP NOT NULL"),
        ("changing-column-type", "ALTER TABLE trial_params ALTER COLUMN param_value TYPE FLOAT(53)"),
        ("changing-column-type", "ALTER TABLE trial_values ALTER COLUMN value TYPE FLOAT(53)"),
        ("adding-not-nullable-field", "ALTER TABLE trial_values ALTER COLUMN value SET NOT NULL"),
        ("unbatched-data-change", "DELETE FROM trial_values WHERE trial_values.value IS NULL"),
    ],
    "v3.0.0.c": [("ban-drop-default",
                  "ALTER TABLE trial_intermediate_values ALTER COLUMN intermediate_value_type DROP DEFAULT")],
    "v3.0.0.d": [("ban-drop-default", "ALTER TABLE trial_values ALTER COLUMN value_type DROP DEFAULT"),
                 ("ban-drop-not-null", "ALTER TABLE trial_values ALTER COLUMN value DROP NOT NULL")],
    "v3.2.0.a": [("require-concurrent-index-creation", "CREATE INDEX trials_study_id_key ON trials (study_id)")],
}


def test_optuna_lock_safety_findings(pytester: pytest.Pytester) -> None:
    """Revisions that use the ORM (v1.3.0.a, v3.0.0.a-d) cannot be rendered offline and are
    linted from the SQL they send on env.py's own connection; the suite's connection (which
    only asks which database it reaches) must not appear in that SQL as a second ``BEGIN``
    (squawk would call it a nested transaction: transaction-nesting)."""
    result = suite_run(pytester, "optuna")
    assert lint_failures(result) == set(OPTUNA_LINT), result.stdout.str()
    for revision, expected in OPTUNA_LINT.items():
        assert lint_findings(result, revision) == expected, failure_text(result, f"test_revision_is_lock_safe[{revision}]")
    assert "transaction-nesting" not in result.stdout.str()


def test_optuna_warnings(pytester: pytest.Pytester) -> None:
    """Real, as advice: v0.9.0.a-v2.6.0.a keep alembic's "empty message" as their docstring;
    squawk's style rules see int/serial keys, varchar and timestamp columns in v0.9.0.a (and
    v1.3.0.a's ``number INTEGER``); no revision sets a statement_timeout."""
    result = suite_run(pytester, "optuna")
    assert warned(result) == OPTUNA_WARNINGS, result.stdout.str()


OPTUNA_WARNINGS = Counter({
    ("v0.9.0.a", "prefer-bigint-over-int"): 18, ("v0.9.0.a", "prefer-identity"): 8,
    ("v0.9.0.a", "prefer-text-field"): 12, ("v0.9.0.a", "prefer-timestamp-tz"): 2,
    ("v1.3.0.a", "prefer-bigint-over-int"): 1,
    **{(r, "revision-docstring"): 1 for r in ("v0.9.0.a", "v1.2.0.a", "v1.3.0.a", "v2.4.0.a", "v2.6.0.a")},
    **{(r, "require-statement-timeout"): 1 for r in ("v0.9.0.a", "v1.2.0.a", "v1.3.0.a", "v2.6.0.a", "v3.0.0.b",
                                                      "v3.0.0.c", "v3.0.0.d", "v3.2.0.a")},
})


def test_optuna_through_its_own_alembic_ini_gives_the_same_findings(pytester: pytest.Pytester) -> None:
    """``alembic_ini`` may name the ini optuna ships (``sqlalchemy.url = sqlite:///alembic.db``,
    ``script_location = alembic`` beside it): the suite runs on PostgreSQL whatever the ini's
    URL says, and so must the lint's offline rendering. Rendered for SQLite, v0.9.0.a's enums
    become VARCHAR(8) columns, its index is flagged, and v2.6.0.a's batch operations cannot
    be rendered at all (SQLite's batch mode reflects the table)."""
    result = suite_run(pytester, "optuna", own_ini=True)
    assert failed_tests(result) == OPTUNA_FAILED, result.stdout.str()
    assert lint_failures(result) == set(OPTUNA_LINT), result.stdout.str()
    for revision, expected in OPTUNA_LINT.items():
        assert lint_findings(result, revision) == expected, failure_text(result, f"test_revision_is_lock_safe[{revision}]")
    assert warned(result) == OPTUNA_WARNINGS, result.stdout.str()


# --- buildbot 4.3.0 --------------------------------------------------------------------------

BUILDBOT_FAILED = {
    "test_upgrade.py::test_downgrade_from_head_in_one_go",
    "test_roundtrip.py::test_revision_round_trips[060]",
    "test_roundtrip.py::test_revision_round_trips[067]",
    *(f"test_lint.py::test_revision_is_lock_safe[{r}]" for r in ("060", "063", "065", "066")),
}


def test_buildbot_outcome_is_exactly_its_findings(pytester: pytest.Pytester) -> None:
    """Nothing errors (the drift tests load ``Model.metadata``), nothing else fails."""
    result = suite_run(pytester, "buildbot")
    assert failed_tests(result) == BUILDBOT_FAILED, result.stdout.str()
    assert outcomes(result) == {"failed": 7, "passed": 38, "skipped": 2, "warnings": 36}, result.stdout.str()


def test_buildbot_prerequisite_and_migrations_build_its_models(pytester: pytest.Pytester) -> None:
    """Buildbot 3.4.1's create_all (the prerequisite) plus revisions 060-067 build exactly
    buildbot 4.3.0's models: autogenerate, CHECK constraints and enums find nothing, and
    ``upgrade head`` in one command builds what stepping one revision at a time builds."""
    result = suite_run(pytester, "buildbot")
    failed = failed_tests(result)
    for test in ("test_drift.py::test_models_match_the_migrations_at_head",
                 "test_drift.py::test_every_model_module_contributes_to_the_metadata",
                 "test_drift.py::test_check_constraints_match_the_models",
                 "test_drift.py::test_enum_labels_match_the_models",
                 "test_upgrade.py::test_upgrade_from_base_to_head_in_one_go"):
        assert test not in failed, result.stdout.str()


def test_buildbot_downgrades_that_fail(pytester: pytest.Pytester) -> None:
    """Real, both:

    * 060's downgrade drops column ``project`` of ``builders``; the upgrade added ``projectid``;
    * 067's downgrade drops ``codebases`` first, which ``codebase_commits`` and
      ``codebase_branches`` still reference (and then drops indexes of tables already gone):
      PostgreSQL refuses, so neither 067 nor ``downgrade`` from head can be undone.
    """
    result = suite_run(pytester, "buildbot")
    text = failure_text(result, "test_revision_round_trips[060]")
    assert ("revision 060 (060_v3.9_add_builder_projects.py): its downgrade() failed (downgrade to 059): UndefinedColumn: "
            'column "project" of relation "builders" does not exist\n  while running: ALTER TABLE builders DROP COLUMN '
            "project") in text, text
    refused = ("DependentObjectsStillExist: cannot drop table codebases because other objects depend on it\n"
               "DETAIL:  constraint codebase_commits_codebaseid_fkey on table codebase_commits depends on table codebases\n"
               "constraint codebase_branches_codebaseid_fkey on table codebase_branches depends on table codebases")
    text = failure_text(result, "test_revision_round_trips[067]")
    assert "revision 067 (067_v4.3_add_codebase_data.py): its downgrade() failed (downgrade to 066): " + refused in text
    text = failure_text(result, "test_downgrade_from_head_in_one_go")
    assert "revision 067 (067_v4.3_add_codebase_data.py): its downgrade() failed (downgrade to base): " + refused in text


# Real lock hazards on a live buildbot master database: the foreign keys are validated in
# place (a scan of builders/buildsets under SHARE ROW EXCLUSIVE on both tables; builders is
# small, buildsets is not), the index on builders blocks its writes while built, 063 and 066
# rewrite every row of steps and builds (buildbot's largest tables) inside the DDL's
# transaction, and 066's SET NOT NULL scans builds under ACCESS EXCLUSIVE.
BUILDBOT_FK_060 = ("ALTER TABLE builders ADD CONSTRAINT fk_builders_projectid FOREIGN KEY(projectid) "
                   "REFERENCES projects (id) ON DELETE SET NULL")
BUILDBOT_FK_065 = ("ALTER TABLE buildsets ADD CONSTRAINT rebuilt_buildid FOREIGN KEY(rebuilt_buildid) "
                   "REFERENCES builds (id) ON DELETE SET NULL")
BUILDBOT_LINT = {
    "060": [("constraint-missing-not-valid", BUILDBOT_FK_060), ("adding-foreign-key-constraint", BUILDBOT_FK_060),
            ("require-concurrent-index-creation", "CREATE INDEX builders_projectid ON builders (projectid)")],
    "063": [("unbatched-data-change", "UPDATE steps SET locks_acquired_at=steps.started_at")],
    "065": [("constraint-missing-not-valid", BUILDBOT_FK_065), ("adding-foreign-key-constraint", BUILDBOT_FK_065)],
    "066": [("adding-not-nullable-field", "ALTER TABLE builds ALTER COLUMN locks_duration_s SET NOT NULL"),
            ("unbatched-data-change", "UPDATE builds SET locks_duration_s=0")],
}


def test_buildbot_lock_safety_findings(pytester: pytest.Pytester) -> None:
    result = suite_run(pytester, "buildbot")
    assert lint_failures(result) == set(BUILDBOT_LINT), result.stdout.str()
    for revision, expected in BUILDBOT_LINT.items():
        assert lint_findings(result, revision) == expected, failure_text(result, f"test_revision_is_lock_safe[{revision}]")


def test_buildbot_warnings(pytester: pytest.Pytester) -> None:
    """Real, as advice: squawk's style rules see int/serial keys and varchar columns in the
    tables 060 and 067 create and the integer columns 063, 065 and 066 add; no revision sets
    a statement_timeout. Every revision has a docstring that says something."""
    result = suite_run(pytester, "buildbot")
    assert warned(result) == BUILDBOT_WARNINGS, result.stdout.str()


BUILDBOT_WARNINGS = Counter({
    ("060", "prefer-bigint-over-int"): 2, ("060", "prefer-identity"): 1, ("060", "prefer-text-field"): 2,
    ("063", "prefer-bigint-over-int"): 1, ("065", "prefer-bigint-over-int"): 1, ("066", "prefer-bigint-over-int"): 1,
    ("067", "prefer-bigint-over-int"): 10, ("067", "prefer-identity"): 3, ("067", "prefer-text-field"): 7,
    **{(r, "require-statement-timeout"): 1 for r in ("060", "061", "062", "063", "064", "065", "066", "067")},
})


def test_buildbot_through_its_own_alembic_ini_gives_the_same_findings(pytester: pytest.Pytester) -> None:
    """``alembic_ini`` may name the ini buildbot ships beside its env.py (``sqlalchemy.url =
    driver://user:pass@localhost/dbname``, alembic's placeholder): the lint renders its
    revisions for PostgreSQL rather than fall back to recording every one of them online."""
    result = suite_run(pytester, "buildbot", own_ini=True)
    assert failed_tests(result) == BUILDBOT_FAILED, result.stdout.str()
    assert lint_failures(result) == set(BUILDBOT_LINT), result.stdout.str()
    for revision, expected in BUILDBOT_LINT.items():
        assert lint_findings(result, revision) == expected, failure_text(result, f"test_revision_is_lock_safe[{revision}]")
    assert warned(result) == BUILDBOT_WARNINGS, result.stdout.str()

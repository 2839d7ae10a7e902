"""Which alembic project the migration suite verifies, and its lint policy.

Read from ``[tool.hokmdb.migrations]`` in the rootdir's ``pyproject.toml`` so the same
suite verifies any alembic project::

    [tool.hokmdb.migrations]
    alembic_ini = "alembic.ini"
    metadata = "myapp.models:metadata"          # module:attribute (or module:Base.metadata) of the MetaData (required
                                                # unless [tool.hokmdb] profile names a profile with
                                                # models; false: the project has no models)
    model_modules = ["myapp.models"]            # every module that must contribute tables
    irreversible = []                           # revisions whose downgrade is not supported
    data_fixtures = "migration_tests/data_fixtures.py"

    [[tool.hokmdb.migrations.transitions]]      # an expand/contract pair (README "Expand and contract")
    expand = "0006"                             # the revision at which the old and the new release both work
    contract = "0007"                           # the revision that removes what the old release uses
    old = ["moves.card"]                        # table.column only the old release uses
    new = ["moves.card_suit", "moves.card_rank"]  # table.column the new release needs

    [tool.hokmdb.migrations.lint]
    default = "error"                           # error | warning for rules not listed
    max_lock_timeout_ms = 1000                  # a revision may lower the deploy's timeouts, never raise them
    max_statement_timeout_ms = 30000            # (the deploy checks against its environment's own values)
    [tool.hokmdb.migrations.lint.rules]
    prefer-robust-stmts = "ignored"
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pytest_hokmdb.config.profile import project_profile
from pytest_hokmdb.errors import ConfigError

Severity = Literal["error", "warning", "ignored"]

# Squawk's advice on schema design and habits, not on what a statement locks: a table that
# uses varchar or int is not unsafe to deploy. Warnings unless the project says otherwise
# ([tool.hokmdb.migrations.lint] style, or per rule in lint.rules).
STYLE_RULES = frozenset({
    "ban-char-field", "prefer-big-int", "prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-identity",
    "prefer-robust-stmts", "prefer-text-field", "prefer-timestamp-tz", "prefer-timestamptz",
    "require-statement-timeout",
})

# The suite's rules about the history itself ([tool.hokmdb.migrations.rules]), with their
# default severities. Each test that checks one says its id.
SUITE_RULES: dict[str, Severity] = {
    "single-head": "error",            # one head, or branches merged explicitly
    "empty-history": "error",          # no revisions: a wrong script_location looks exactly like this
    "real-downgrade": "error",         # downgrade() does something, unless the revision is irreversible
    "revision-docstring": "warning",   # a revision says what it changes and why (an opinion: warns)
}


class LintPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Literal["error", "warning"] = "error"
    rules: dict[str, Severity] = Field(default_factory=dict)
    # The deploy sets lock_timeout and statement_timeout for every statement it runs; a
    # revision may lower them, and raising them is the finding "raises-timeout". Projects
    # migrated without hokmdb's deploy can still require each revision to set its own.
    require_lock_timeout: bool = False
    max_lock_timeout_ms: int | None = Field(1000, gt=0, description="the deploy's database.lock_timeout_ms")
    max_statement_timeout_ms: int | None = Field(
        30_000, gt=0, description="the deploy's deploy.migration_statement_timeout_ms (none: not checked)",
    )

    # Severity of the style rules (STYLE_RULES) not listed in ``rules``.
    style: Severity = "warning"

    def severity(self, rule: str) -> Severity:
        if rule in self.rules:
            return self.rules[rule]
        return self.style if rule in STYLE_RULES else self.default


def _column_ref(value: str) -> str:
    table, dot, column = value.partition(".")
    if not dot or not table or not column or "." in column:
        raise ValueError(f"{value!r} is not table.column")
    return value


class Transition(BaseModel):
    """An expand/contract pair of revisions, as a game release needs them: between ``expand``
    and ``contract`` both the old and the new release work. The deploy applies ``contract``
    only when nothing has used the ``old`` columns for a while (``deploy.transition_window_s``),
    and an automatic rollback never undoes ``expand`` while something uses the ``new`` ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expand: str = Field(description="the revision at which the old and the new release both work")
    contract: str = Field(description="the revision that removes what only the old release uses")
    old: list[str] = Field(min_length=1, description="table.column that only the old release uses")
    new: list[str] = Field(min_length=1, description="table.column the new release needs")
    note: str | None = None

    @field_validator("old", "new")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        return [_column_ref(v) for v in value]

    @staticmethod
    def columns(refs: list[str]) -> list[tuple[str, str]]:
        return [tuple(r.split(".", 1)) for r in refs]  # type: ignore[misc]


class MigrationSuiteSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alembic_ini: Path = Path("alembic.ini")
    script_location: Path | None = Field(None, description="default: the alembic ini's script_location")
    # No built-in default: a project that forgot the key must not be compared with someone
    # else's models. The project's own profile ([tool.hokmdb] profile) may supply it;
    # ``false`` says the project has none (the model drift tests are then skipped).
    metadata: str | Literal[False] | None = Field(None, description="module:attribute of the MetaData, or false")
    model_modules: list[str] = Field(default_factory=list)
    irreversible: list[str] = Field(default_factory=list)
    # pytest-alembic's: downgrades are proven down to this revision, not below it.
    minimum_downgrade_revision: str | None = None
    # Revisions known to be broken and superseded: their own tests are skipped with this
    # reason; the upgrade path still applies them (they are part of every database's history).
    skip_revisions: list[str] = Field(default_factory=list)
    # What must exist before the first revision (a schema for version_table_schema, tables a
    # project creates with metadata.create_all): a SQL file (path ending in .sql), or
    # "module:function" called with a SQLAlchemy Connection; run on every empty database.
    prerequisites: str | None = None
    data_fixtures: Path | None = None
    lint: LintPolicy = LintPolicy()
    transitions: list[Transition] = Field(default_factory=list)
    rules: dict[str, Severity] = Field(default_factory=dict, description="severity per suite rule (SUITE_RULES)")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        unknown = sorted(set(value) - set(SUITE_RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; the suite's rules are {', '.join(SUITE_RULES)} "
                             "(lint rules go under [tool.hokmdb.migrations.lint.rules])")
        return value

    def rule_severity(self, rule: str) -> Severity:
        return self.rules.get(rule, SUITE_RULES[rule])
    root: Path = Field(Path("."), exclude=True)

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.root / path

    def load_metadata(self) -> Any:
        """The project's MetaData; ``ConfigError`` when unset or unloadable; ``None`` for ``false``."""
        if self.metadata is False:
            return None
        if self.metadata is None:
            raise ConfigError(
                "[tool.hokmdb.migrations] metadata is not set: the model drift tests compare your SQLAlchemy models "
                "with what the migrations build; set metadata = \"yourapp.models:metadata\" (module:attribute), "
                "metadata = false if the project has no models, or choose an application profile that has models "
                "([tool.hokmdb] profile)"
            )
        return load_object("metadata", self.metadata, "'module:attribute'")


def load_object(key: str, spec: str, form: str) -> Any:
    """What ``[tool.hokmdb.migrations] key = "module:attribute"`` names; ``ConfigError``
    saying which key when it is malformed or cannot be imported."""
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ConfigError(f"[tool.hokmdb.migrations] {key} = {spec!r}: use {form}")
    try:
        return resolve_attribute(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"[tool.hokmdb.migrations] {key} = {spec!r} cannot be loaded: {exc}") from None


def resolve_attribute(module: Any, attribute: str) -> Any:
    """``attribute`` of ``module``, dotted as in an entry point (``models:Base.metadata``, where
    most projects keep their MetaData: alembic's own env.py template says ``mymodel.Base.metadata``)."""
    value = module
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def load_settings(root: Path) -> MigrationSuiteSettings:
    """Settings from ``root/pyproject.toml`` (defaults when the section is absent)."""
    pyproject = root / "pyproject.toml"
    data: dict[str, Any] = {}
    if pyproject.is_file():
        try:
            data = dict(tomllib.loads(pyproject.read_text()).get("tool", {}).get("hokmdb", {}).get("migrations", {}))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
    if data.get("metadata") is None:
        # The profile the project chose, explicitly, may name its models; no profile, no default.
        profile = project_profile(root)
        if profile.metadata:
            data["metadata"] = profile.metadata
    try:
        settings = MigrationSuiteSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ConfigError(f"{pyproject} [tool.hokmdb.migrations] is invalid: {problems}") from None
    return settings.model_copy(update={"root": root})

"""The alembic history the suite verifies: loaded once, then checked for shape.

Why load once: ``alembic.command.upgrade`` builds a new ``ScriptDirectory`` per command,
which re-imports every revision file; stepping N revisions that way costs N^2 imports.
``load_history`` builds the ``Config`` and ``ScriptDirectory`` once per process (cached on
the project's paths) and every other module of the suite steps through them.

The rules checked here are the ones a reviewer would otherwise check by eye:

* one head, and a linear history or one whose branches are merged explicitly;
* every revision file has a docstring that says something (not alembic's
  ``empty message`` and ``Revision ID:`` boilerplate);
* every ``downgrade()`` does something: read with ``ast`` so that ``pass``, ``...``, an
  empty body or a bare ``raise`` are caught without running anything; a revision that
  cannot be undone is listed in ``irreversible`` and is then left out of the downgrade
  tests instead of failing them.

Every problem names the revision and its file, so a failure points at what to fix.
"""

from __future__ import annotations

import ast
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationStep
from alembic.script import Script, ScriptDirectory

from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.migration.settings import MigrationSuiteSettings

BASE = "base"

# Lines alembic's script.py.mako writes into every docstring; they say nothing about the change.
_BOILERPLATE_PREFIXES = ("revision id:", "revises:", "create date:")
_EMPTY_MESSAGES = {"empty message", ""}


class MigrationFailure(AssertionError):
    """A migration rule was broken. Subclasses AssertionError so pytest reports a failed
    check (with this message, which names the revision) rather than a crash."""


class EmptyHistory(MigrationFailure):
    """The history has no revisions: reported once (rule ``empty-history``); every test that
    needs a revision is skipped saying so instead of failing for the same reason."""


class HistoryError(ConfigError):
    """The script directory cannot be loaded at all (bad ini, unknown down_revision, a
    revision file that does not import): nothing else in the suite can run."""


@dataclass(frozen=True)
class Revision:
    """One revision file, as far as the suite needs it."""

    id: str
    parents: tuple[str, ...]
    path: Path
    docstring: str | None

    @property
    def parent_target(self) -> str:
        """What to downgrade to in order to undo exactly this revision.

        ``base`` for a root, else a parent's id: downgrading a merge to one of its parents
        unapplies only the merge (the other parent is not its descendant), which leaves
        both parents recorded as heads.
        """
        return self.parents[0] if self.parents else BASE

    @property
    def label(self) -> str:
        return f"revision {self.id} ({self.path.name})"


@dataclass(frozen=True)
class History:
    """The loaded history: alembic's objects plus the revisions in upgrade order."""

    settings: MigrationSuiteSettings
    config: Config
    script: ScriptDirectory
    revisions: tuple[Revision, ...]  # bases first, heads last (a valid upgrade order)
    heads: tuple[str, ...]

    @functools.cached_property
    def by_id(self) -> dict[str, Revision]:
        return {revision.id: revision for revision in self.revisions}

    @property
    def ids(self) -> list[str]:
        return [revision.id for revision in self.revisions]

    def revision(self, revision_id: str) -> Revision:
        try:
            return self.by_id[revision_id]
        except KeyError:
            raise MigrationFailure(f"revision {revision_id} is not in the history ({', '.join(self.ids)})") from None

    @property
    def head_state(self) -> tuple[str, ...]:
        """The heads the tests "at head" build, compare and downgrade from: the single head;
        or, when the project turned rule ``single-head`` down (warning or ignored), every
        head, as ``alembic upgrade heads`` does. With the rule at error, several heads fail
        here with the head test's message."""
        if not self.revisions:
            raise EmptyHistory(empty_history_problem(self))
        problem = head_problem(self)
        if problem and self.settings.rule_severity("single-head") == "error":
            raise MigrationFailure(problem)
        return tuple(sorted(self.heads))

    @property
    def head_target(self) -> str:
        """What to upgrade to for ``head_state``: the head, or ``heads``."""
        state = self.head_state
        return state[0] if len(state) == 1 else "heads"

    @functools.cached_property
    def is_linear(self) -> bool:
        """No branch and no merge: every revision has at most one parent and one child."""
        parents = [p for revision in self.revisions for p in revision.parents or (BASE,)]
        return all(len(r.parents) <= 1 for r in self.revisions) and len(parents) == len(set(parents))

    @functools.cached_property
    def is_chain(self) -> bool:
        """Linear and without ``depends_on``: one revision up or down is exactly one
        migration step (the runner plans those steps itself, see ``Stepper.plan``)."""
        return self.is_linear and not any(
            getattr(self.script.get_revision(revision.id), "dependencies", None) for revision in self.revisions
        )

    def ancestors(self, revision_id: str) -> set[str]:
        """``revision_id`` and every revision it depends on."""
        seen: set[str] = set()
        pending = [revision_id]
        while pending:
            current = pending.pop()
            if current not in seen and current in self.by_id:
                seen.add(current)
                pending.extend(self.by_id[current].parents)
        return seen

    def downgrade_exemption(self, revision_id: str) -> str | None:
        """Why ``revision_id``'s downgrade is not proven, or None: it is listed as
        irreversible, or it is at or below ``minimum_downgrade_revision``."""
        if revision_id in self.settings.irreversible:
            return f"revision {revision_id} is listed as irreversible in [tool.hokmdb.migrations]"
        minimum = self.settings.minimum_downgrade_revision
        if minimum and revision_id in self.ancestors(minimum):
            return (f"revision {revision_id} is at or below minimum_downgrade_revision = {minimum!r} in "
                    "[tool.hokmdb.migrations]")
        return None

    def is_irreversible(self, revision_id: str) -> bool:
        return self.downgrade_exemption(revision_id) is not None

    def skip_reason(self, revision_id: str) -> str | None:
        if revision_id in self.settings.skip_revisions:
            return f"revision {revision_id} is listed in skip_revisions of [tool.hokmdb.migrations]"
        return None

    @property
    def downgrade_floor(self) -> str:
        """How far down ``downgrade`` may go from head: the newest irreversible revision
        (its downgrade is not supported), else ``base``."""
        floor = BASE
        for revision in self.revisions:
            if self.is_irreversible(revision.id):
                floor = revision.id
        return floor


def _alembic_config(settings: MigrationSuiteSettings) -> Config:
    ini = settings.resolve(settings.alembic_ini)
    if not ini.is_file():
        raise HistoryError(f"[tool.hokmdb.migrations] alembic_ini: {ini} does not exist")
    pyproject = settings.root / "pyproject.toml"
    toml_file = None
    if pyproject.is_file() and "alembic" in tomllib.loads(pyproject.read_text()).get("tool", {}):
        toml_file = str(pyproject)  # alembic >= 1.16 may keep its settings in [tool.alembic]
    config = Config(str(ini), toml_file=toml_file)
    if settings.script_location is not None:
        config.set_main_option("script_location", str(settings.resolve(settings.script_location)))
    else:
        config.set_main_option("script_location", resolve_script_location(config, settings, ini))
    # Read the files now, then hide the file name: the template env.py calls
    # fileConfig(config.config_file_name) on every run, which would replace pytest's log
    # handlers (and disable existing loggers) once per command.
    _ = config.file_config, config.toml_alembic_config
    config.config_file_name = None
    return config


def resolve_script_location(config: Config, settings: MigrationSuiteSettings, ini: Path) -> str:
    """The ini's ``script_location`` as an absolute path. alembic resolves a relative one
    (its templates' default) against the current directory, which is the project's root
    when a developer runs ``alembic`` but anything at all under pytest: from another checkout
    the suite would read *that* checkout's revisions and pass. Relative means relative to the
    project root (where ``alembic`` is run), else to the ini's directory; ``package:path``
    locations are left to alembic."""
    location = config.get_main_option("script_location")
    if not location:
        raise HistoryError(f"{ini} has no script_location (in [alembic] or [tool.alembic])")
    if ":" in location and not Path(location).is_absolute():
        return location  # a package resource (myapp:migrations)
    path = Path(location)
    if path.is_absolute():
        return location
    candidates = [settings.root / path, ini.parent / path]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate.resolve())
    raise HistoryError(
        f"{ini}: script_location {location!r} is not a directory under the project root {settings.root} "
        f"or beside the ini ({ini.parent}); set it to the script directory (%(here)s/{location} is unambiguous)"
    )


def script_parents(script: Script) -> tuple[str, ...]:
    """A revision file's ``down_revision`` as a tuple (empty for a root)."""
    down = script.down_revision
    return () if down is None else (down,) if isinstance(down, str) else tuple(down)


def _revision_of(script: Script) -> Revision:
    return Revision(id=script.revision, parents=script_parents(script), path=Path(script.path),
                    docstring=script.module.__doc__)


def single_upgrade_step(script_dir: ScriptDirectory, script: Script, heads: tuple[str, ...]) -> list[MigrationStep] | None:
    """The steps of upgrading ``heads`` to ``script`` when that is exactly one revision:
    ``heads`` are its parents and it has no ``depends_on``. None otherwise (alembic plans it).

    Why: alembic's planner walks the whole history to find that one step (about 1 ms at
    200 revisions), and the suite takes such a step three times per revision (round trips)
    and the lint once more: quadratic over a run. The step is alembic's own object."""
    if getattr(script, "dependencies", None) or sorted(heads) != sorted(script_parents(script)):
        return None
    return [MigrationStep.upgrade_from_script(script_dir.revision_map, script)]


@dataclass(frozen=True)
class _Loaded:
    config: Config
    script: ScriptDirectory
    revisions: tuple[Revision, ...]
    heads: tuple[str, ...]


# One entry per project (its paths): the script directory is never rebuilt in a process.
_LOADED: dict[tuple[Path, Path, Path | None, int | None], _Loaded] = {}


def _load(settings: MigrationSuiteSettings) -> _Loaded:
    config = _alembic_config(settings)
    try:
        script = ScriptDirectory.from_config(config)
        heads = tuple(script.get_heads())
        newest_first = list(script.walk_revisions(BASE, "heads"))
    except Exception as exc:  # a revision file that does not import is as fatal as a bad ini
        raise HistoryError(f"the alembic script directory of {settings.root} cannot be loaded: {exc}") from exc
    revisions = tuple(_revision_of(s) for s in reversed(newest_first))
    return _Loaded(config, script, revisions, heads)


def load_history(settings: MigrationSuiteSettings) -> History:
    """The project's history. Alembic's objects are cached per project paths; the rest of
    the settings (``irreversible``, metadata, fixtures) always come from the caller."""
    ini = settings.resolve(settings.alembic_ini)
    key = (settings.root.resolve(), settings.alembic_ini, settings.script_location,
           ini.stat().st_mtime_ns if ini.is_file() else None)
    if key not in _LOADED:
        _LOADED[key] = _load(settings)
    loaded = _LOADED[key]
    return History(settings, loaded.config, loaded.script, loaded.revisions, loaded.heads)


# --- the rules ---------------------------------------------------------------------------


def empty_history_problem(history: History) -> str:
    return (f"the history has no revisions: {history.script.dir} holds no revision file "
            "(is script_location the project's script directory?)")


def head_problem(history: History) -> str | None:
    """One head, or a message naming every head and where the history forked (an empty
    history has no head either: that is ``empty_history_problem``, its own rule)."""
    if len(history.heads) <= 1:
        return None
    children: dict[str, list[str]] = {}
    for revision in history.revisions:
        for parent in revision.parents or (BASE,):
            children.setdefault(parent, []).append(revision.id)
    forks = [
        f"{'the base' if parent == BASE else 'revision ' + parent} has {len(kids)} children ({', '.join(sorted(kids))})"
        for parent, kids in children.items()
        if len(kids) > 1
    ]
    heads = ", ".join(
        f"{history.by_id[h].label}" if h in history.by_id else h for h in history.heads
    )
    return (
        f"the history has {len(history.heads)} heads: {heads}; "
        + ("; ".join(forks) + "; " if forks else "")
        + f"merge them explicitly (alembic merge -m '...' {' '.join(history.heads)}) or rebase one onto the other"
    )


def docstring_problem(revision: Revision) -> str | None:
    """A revision must say what it changes and why; alembic's template alone does not."""
    text = revision.docstring or ""
    meaningful = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().lower().startswith(_BOILERPLATE_PREFIXES)
    ]
    if not meaningful or " ".join(meaningful).lower() in _EMPTY_MESSAGES:
        what = "no docstring" if not text.strip() else "only alembic's boilerplate as its docstring"
        return (
            f"{revision.label} has {what}: say what it changes and why in the module docstring "
            "(alembic revision -m '...' writes the first line)"
        )
    return None


def _is_noop(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Pass):
        return True
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)


def downgrade_problem(revision: Revision) -> str | None:
    """A downgrade must undo something: an empty, ``pass``-only or raise-only body does not.

    Read from the source with ``ast`` rather than by running it, so the check needs no
    database and cannot be fooled by a body that happens not to fail.
    """
    try:
        tree = ast.parse(revision.path.read_text(), filename=str(revision.path))
    except SyntaxError as exc:  # alembic could import it, so this is a pathological encoding case
        return f"{revision.label} cannot be parsed: {exc}"
    functions = {
        node.name: node.body for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    if "downgrade" not in functions:
        return f"{revision.label} has no downgrade() function; write one or list the revision under irreversible"
    body = functions["downgrade"]
    if all(_is_noop(s) for s in functions.get("upgrade", [])):
        return None  # an upgrade that does nothing (a merge point, a placeholder) has nothing to undo
    if all(_is_noop(statement) for statement in body):
        return (
            f"{revision.label}: downgrade() does nothing (its body is only pass/.../a docstring); "
            "undo what upgrade() does, or list the revision under [tool.hokmdb.migrations] irreversible"
        )
    if all(_is_noop(statement) or isinstance(statement, ast.Raise) for statement in body):
        return (
            f"{revision.label}: downgrade() only raises; if the revision cannot be undone, list it under "
            "[tool.hokmdb.migrations] irreversible so the downgrade tests stop there"
        )
    return None


def irreversible_problems(history: History) -> list[str]:
    """Names in ``irreversible``, ``skip_revisions`` and ``minimum_downgrade_revision`` that
    are not revisions: a typo would silently test nothing (or everything)."""
    settings = history.settings
    named = [("irreversible lists", name) for name in settings.irreversible]
    named += [("skip_revisions lists", name) for name in settings.skip_revisions]
    if settings.minimum_downgrade_revision:
        named.append(("minimum_downgrade_revision is", settings.minimum_downgrade_revision))
    return [
        f"[tool.hokmdb.migrations] {key} {name!r}, which is not a revision of the history ({', '.join(history.ids)})"
        for key, name in named
        if name not in history.by_id
    ]

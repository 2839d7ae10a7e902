"""Application profiles: what one application brings to the generic tool.

hokmdb's core (checks, migration suite, backups, deploys) knows no application table. What
is specific to one application lives in a *profile*: its SQLAlchemy models, the tables on
its hot path, the queries the smoke suite times and how to pick realistic parameters for
them, its data invariants (extra check groups) and a seeder for development data. Hokm is
the first profile (the ``hokm_profile`` package); a project chooses its profile in
``pyproject.toml``::

    [tool.hokmdb]
    profile = "hokm"                 # an entry point of the group "hokmdb.profiles",
                                     # or "package.module:attribute" of a Profile

Without the key the project has no profile: the generic checks run, nothing
application-specific is imported, and whatever needs a profile (seeding) says so.

Everything heavy (models, checks, the seeder) is named by an import path and loaded only
when used, so choosing a profile costs nothing until a check or command needs it.
"""

from __future__ import annotations

import functools
import importlib
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pytest_hokmdb.config.model import HotQuery
from pytest_hokmdb.errors import ConfigError, Refused

ENTRY_POINT_GROUP = "hokmdb.profiles"


class HotQueryConfigError(ValueError):
    """A hot query's configuration cannot be applied (unknown placeholder, unparsable literal)."""


@dataclass(frozen=True)
class Samples:
    """Values for the hot queries' ``$sample_*`` placeholders (the profile's sampler picks
    them from the newest data), and where they came from."""

    values: dict[str, int | None]
    source: str

    def value(self, placeholder: str) -> int:
        if placeholder not in self.values:
            known = " or ".join(sorted(self.values)) or "none: the application profile has no sampler"
            raise HotQueryConfigError(f"unknown placeholder {placeholder!r}: use {known}")
        found = self.values[placeholder]
        if found is None:
            raise HotQueryConfigError(f"the database has nothing to fill {placeholder} with")
        return found

    def describe(self) -> str:
        values = " ".join(f"{name.removeprefix('$sample_')}={value}" for name, value in self.values.items())
        return f"{values} ({self.source})" if values else self.source


def load_object(spec: str, what: str) -> Any:
    """``module:attribute`` (or a module) imported; ConfigError naming ``what`` when it cannot be."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} = {spec!r} cannot be loaded: {exc}",
                          hint="name an importable 'package.module:attribute' (is the package installed?)") from None


@dataclass(frozen=True)
class Profile:
    """One application's knowledge, each part optional. Import paths, not objects, so that a
    profile can be chosen without importing its models or checks."""

    name: str
    description: str = ""
    # module:attribute of the SQLAlchemy MetaData the application's models declare.
    metadata: str | None = None
    # Tables on the hot path, which also hold most rows: vacuum/dead-tuple checks watch them.
    hot_tables: tuple[str, ...] = ()
    # Default ``smoke.hot_queries`` (an environment's config may replace them).
    hot_queries: tuple[HotQuery, ...] = ()
    # module:function, ``async (conn) -> performance.Samples | None``: values for the hot
    # queries' ``$sample_*`` placeholders, taken from the newest data.
    sampler: str | None = None
    # The placeholders the sampler fills, for messages about unknown ones.
    placeholders: tuple[str, ...] = ()
    # What an operator should look at when sampling is slow, and how "no data" reads.
    sample_hint: str = "the tables the sampler reads lack an index or are bloated"
    no_data: str = "no data yet"
    # Check group -> module:attribute of a list of check functions (e.g. data invariants).
    check_groups: Mapping[str, str] = field(default_factory=dict)
    # module:function, ``async (conn, *, players, games, random_seed, clear, progress, anchor)``
    # returning a report with ``rows``, ``seconds`` and ``summary_lines()``.
    seeder: str | None = None
    # module:attribute of a ``deploy.load.Workload``: the application's traffic, which deploy
    # rehearsals and the benchmark run while they migrate.
    workload: str | None = None

    def load_metadata(self) -> Any:
        return load_object(self.metadata, f"profile {self.name}: metadata") if self.metadata else None

    def load_sampler(self) -> Callable[[Any], Awaitable[Any]] | None:
        return load_object(self.sampler, f"profile {self.name}: sampler") if self.sampler else None

    def load_checks(self) -> dict[str, list[Any]]:
        return {group: list(load_object(spec, f"profile {self.name}: check group {group}"))
                for group, spec in self.check_groups.items()}

    def load_workload(self) -> Any:
        return load_object(self.workload, f"profile {self.name}: workload") if self.workload else None

    def load_seeder(self) -> Callable[..., Awaitable[Any]]:
        if not self.seeder:
            raise Refused(f"profile {self.name} has no seeder, so there is no data to generate",
                          hint="seed with the application's own tooling, or add a seeder to the profile")
        return load_object(self.seeder, f"profile {self.name}: seeder")


NO_PROFILE = Profile(name="none", description="no application profile: generic checks only")


def _from_pyproject(project_root: Path) -> str | None:
    pyproject = project_root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("hokmdb", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
    spec = table.get("profile")
    if spec is not None and (not isinstance(spec, str) or not spec.strip()):
        raise ConfigError(f"{pyproject} [tool.hokmdb] profile = {spec!r}: name a profile (e.g. \"hokm\") or remove the key")
    return spec


@functools.lru_cache(maxsize=16)
def load_profile(spec: str | None) -> Profile:
    """The profile ``spec`` names: an entry point of ``hokmdb.profiles`` or ``module:attribute``."""
    if spec is None:
        return NO_PROFILE
    if ":" not in spec and "." not in spec:
        found = entry_points(group=ENTRY_POINT_GROUP, name=spec)
        if not found:
            known = ", ".join(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))) or "none installed"
            raise ConfigError(f"[tool.hokmdb] profile = {spec!r}: no such profile (installed: {known})",
                              hint="install the package that provides it, or name it as 'package.module:attribute'")
        obj = next(iter(found)).load()
    else:
        obj = load_object(spec if ":" in spec else f"{spec}:profile", "[tool.hokmdb] profile")
    if not isinstance(obj, Profile):
        raise ConfigError(f"[tool.hokmdb] profile = {spec!r} is a {type(obj).__name__}, not a hokmdb Profile")
    return obj


@functools.lru_cache(maxsize=16)
def project_profile(project_root: Path) -> Profile:
    """The profile ``[tool.hokmdb] profile`` in the project's pyproject.toml chooses (none: NO_PROFILE)."""
    return load_profile(_from_pyproject(project_root))

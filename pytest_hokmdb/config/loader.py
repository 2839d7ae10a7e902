"""Find, interpolate and validate an environment's configuration file.

Validation is done on the whole file before anything connects, and every problem is
reported in one message that names the file, the key and the environment variable
behind it, because an operator on call fixes them all in one go.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from pytest_hokmdb.config.model import ENVIRONMENTS, HokmdbConfig
from pytest_hokmdb.errors import ConfigError
from pytest_hokmdb.redaction import is_secret_key, register_secrets

ENV_FILE_NAME = ".env.database"
CONFIG_SUBDIR = Path("database") / "config"
_VAR_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where it came from, for messages and relative paths."""

    config: HokmdbConfig
    path: Path
    project_root: Path
    variables: Mapping[str, str] = field(default_factory=dict)
    stood_in: tuple[str, ...] = ()  # required variables replaced by a placeholder (stand_in_missing)
    sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # key path -> variables it reads

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.project_root / path)

    def origin(self, *keys: str) -> str:
        """Where keys' values come from, for a hint: ``database.host and database.port in
        database/config/staging.json (from $DB_HOST_STAGING, $DB_PORT)``."""
        variables = [f"${name}" for key in keys for name in self.sources.get(key, ())]
        where = f" (from {', '.join(dict.fromkeys(variables))})" if variables else ""
        return f"{' and '.join(keys)} in {self.path}{where}"


def find_project_root(start: Path | None = None) -> Path:
    """The nearest directory (from cwd upwards) holding ``database/config``.

    Falls back to the checkout this package was installed from (editable install), so
    scripts work from any working directory.
    """
    override = os.environ.get("HOKMDB_PROJECT_ROOT")
    if override:
        return Path(override).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_SUBDIR).is_dir():
            return candidate
    package_checkout = Path(__file__).resolve().parents[2]
    if (package_checkout / CONFIG_SUBDIR).is_dir():
        return package_checkout
    return here


def _read_env_file(project_root: Path) -> tuple[dict[str, str], Path | None]:
    path = Path(os.environ.get("HOKMDB_ENV_FILE", project_root / ENV_FILE_NAME))
    if not path.is_file():
        return {}, None
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return values, path


PLACEHOLDER = "placeholder"


@dataclass
class _Interpolation:
    variables: Mapping[str, str]
    stand_in_missing: bool = False
    stood_in: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (key path, variable)
    sources: dict[str, list[str]] = field(default_factory=dict)  # key path -> variables used

    def walk(self, node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: self.walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [self.walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str):
            return self._string(node, path)
        return node

    def _string(self, text: str, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match["name"], match["default"]
            self.sources.setdefault(path, []).append(name)
            value = self.variables.get(name)
            if value not in (None, ""):
                return value  # type: ignore[return-value]
            if default is not None:
                return default
            if self.stand_in_missing:
                if name not in self.stood_in:
                    self.stood_in.append(name)
                return PLACEHOLDER
            self.missing.append((path, name))
            return ""

        return _VAR_RE.sub(replace, text.replace("$${", "\x00")).replace("\x00", "${")


def _describe_validation_error(exc: ValidationError, interp: _Interpolation) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            problems.append(f"{loc}: unknown key (check its spelling; see README 'Configuration reference')")
            continue
        if kind == "missing":
            problems.append(f"{loc}: required key is missing")
            continue
        message = err["msg"].removeprefix("Value error, ")
        detail = ""
        if not is_secret_key(loc) and not isinstance(err.get("input"), (dict, list)) and "input" in err:
            detail = f" (got {err['input']!r})"
        variables = interp.sources.get(loc)
        source = f" [from ${{{variables[0]}}}]" if variables else ""
        prefix = f"{loc}: " if loc else ""
        problems.append(f"{prefix}{message}{detail}{source}")
    return problems


def config_path_for(environment: str, config: Path | str | None, project_root: Path) -> Path:
    if config is None:
        return project_root / CONFIG_SUBDIR / f"{environment}.json"
    path = Path(config)
    if not path.is_absolute():
        path = Path.cwd() / path
    return path / f"{environment}.json" if path.is_dir() else path


def load_config(
    environment: str,
    config: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    project_root: Path | None = None,
    stand_in_missing: bool = False,
) -> LoadedConfig:
    """Load ``environment``'s config; raise ``ConfigError`` (exit 2) listing every problem.

    ``stand_in_missing`` replaces unset required variables by a placeholder, for callers
    that check structure only (CI without secrets) or read one unrelated section (notify).
    """
    if environment not in ENVIRONMENTS:
        raise ConfigError(
            f"unknown environment {environment!r}",
            hint=f"use one of: {', '.join(ENVIRONMENTS)}",
        )
    root = project_root or find_project_root()
    path = config_path_for(environment, config, root)
    if not path.is_file():
        raise ConfigError(
            f"configuration file {path} does not exist",
            hint="pass --db-config DIR_OR_FILE, or run from the project checkout",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")

    file_values, env_file = _read_env_file(root)
    variables = {**file_values, **(os.environ if environ is None else environ)}
    interp = _Interpolation(variables, stand_in_missing=stand_in_missing)
    data = interp.walk(raw, "")

    problems = [
        f"{key}: environment variable {var} is not set"
        f" (set it in the environment{' or in ' + str(env_file) if env_file else ' or in ' + ENV_FILE_NAME})"
        for key, var in interp.missing
    ]
    missing_keys = {key for key, _ in interp.missing}
    if data.get("environment") not in (None, environment):
        problems.append(f"environment: says {data.get('environment')!r} but the file is loaded for {environment!r}")
    try:
        model = HokmdbConfig.model_validate(data)
    except ValidationError as exc:
        # A missing variable already explains its key; don't report it twice.
        problems += [p for p in _describe_validation_error(exc, interp) if p.split(":")[0] not in missing_keys]
        model = None
    if problems or model is None:
        lines = "\n".join(f"  - {p}" for p in problems)
        count = len(problems)
        raise ConfigError(
            f"configuration {path} is invalid ({count} problem{'s' if count != 1 else ''}):\n{lines}",
        )
    register_secrets(model.secrets())
    return LoadedConfig(config=model, path=path, project_root=root, variables=variables, stood_in=tuple(interp.stood_in),
                        sources={key: tuple(names) for key, names in interp.sources.items()})

"""What every check shares: its context, its result, and the decorator that registers it.

A check is one async function ``check(ctx) -> CheckResult``. The smoke suite, the
``DatabaseSmokeTests`` API and the scripts all run the same functions, so a check's
logic exists exactly once. The decorator times the check, bounds it with a statement
timeout, and turns "could not apply" (no permission, no replicas) into a skip with the
reason, never a silent pass.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg

from pytest_hokmdb.config import HokmdbConfig
from pytest_hokmdb.config.model import SmokeSettings
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.errors import HokmdbError
from pytest_hokmdb.redaction import redact

Status = Literal["passed", "failed", "skipped"]
Severity = Literal["blocker", "critical", "normal", "minor", "trivial"]
# Allure categories (issue: CI quality gates) and the JSON report group failures by these.
Category = Literal["schema drift", "security", "performance regression", "data integrity", "infrastructure"]


@dataclass(frozen=True)
class CheckSpec:
    name: str  # stable id, e.g. "security.app_role_not_superuser"
    title: str  # what an operator reads in a report
    feature: str  # group: Connection, Schema, Security, Performance, Connection pool, Health, Data integrity
    category: Category
    severity: Severity = "normal"


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict, with the numbers and evidence an operator needs to act on it."""

    status: Status
    message: str
    measured: Any = None
    threshold: Any = None
    evidence: dict[str, str] = field(default_factory=dict)
    check: str = ""
    duration_s: float = 0.0

    @classmethod
    def passed(cls, message: str, **kwargs: Any) -> CheckResult:
        return cls("passed", message, **kwargs)

    @classmethod
    def failed(cls, message: str, **kwargs: Any) -> CheckResult:
        return cls("failed", message, **kwargs)

    @classmethod
    def skipped(cls, message: str, **kwargs: Any) -> CheckResult:
        return cls("skipped", message, **kwargs)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["message"] = redact(self.message)
        data["evidence"] = {k: redact(v) for k, v in self.evidence.items()}
        for key in ("measured", "threshold"):
            value = data[key]
            if value is not None and not isinstance(value, (int, float, str, bool, list, dict)):
                data[key] = str(value)
        return data


@dataclass
class CheckContext:
    """Everything a check may look at. ``conn`` is read-only on staging and production."""

    conn: asyncpg.Connection
    target: Target
    config: HokmdbConfig
    project_root: Path
    target_revision: str | None = None
    window: timedelta | None = timedelta(days=7)

    @property
    def settings(self) -> SmokeSettings:
        return self.config.smoke


CheckFunction = Callable[[CheckContext], Awaitable[CheckResult]]
REGISTRY: dict[str, CheckSpec] = {}


def check(
    name: str, *, title: str, feature: str, category: Category, severity: Severity = "normal"
) -> Callable[[CheckFunction], CheckFunction]:
    """Register a check and wrap it with timing, a statement timeout and error mapping."""
    spec = CheckSpec(name=name, title=title, feature=feature, category=category, severity=severity)
    if name in REGISTRY and REGISTRY[name] != spec:
        raise ValueError(f"check {name!r} is registered twice")
    REGISTRY[name] = spec

    def decorate(fn: CheckFunction) -> CheckFunction:
        @functools.wraps(fn)
        async def wrapper(ctx: CheckContext) -> CheckResult:
            started = time.monotonic()
            timeout_ms = ctx.settings.check_statement_timeout_ms
            try:
                # JIT compiling a check's query can cost a second and more (the planner's
                # estimates for bounded windows are pessimistic); a check is short: no JIT.
                await ctx.conn.execute(f"SET statement_timeout = {int(timeout_ms)}; SET jit = off")
                result = await fn(ctx)
            except asyncpg.QueryCanceledError:
                result = CheckResult.failed(
                    f"{title}: did not finish within {timeout_ms} ms (statement timeout); "
                    "the database is overloaded or the check's tables are locked",
                    threshold=timeout_ms,
                )
            except asyncpg.InsufficientPrivilegeError as exc:
                result = CheckResult.skipped(f"{title}: not applicable, the role may not read what it needs ({exc})")
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
                # Managed servers hide some catalog views and functions.
                result = CheckResult.skipped(f"{title}: not applicable on this server ({exc})")
            except HokmdbError as exc:
                result = CheckResult.failed(f"{title}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                # A check that cannot finish has not passed: report it as a failure, not a traceback.
                result = CheckResult.failed(f"{title}: could not run: {type(exc).__name__}: {redact(str(exc))}")
            finally:
                try:
                    await ctx.conn.execute("RESET statement_timeout; RESET jit")
                except (asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass
            return replace(result, check=name, duration_s=round(time.monotonic() - started, 4))

        wrapper.spec = spec  # type: ignore[attr-defined]
        return wrapper

    return decorate


def spec_of(fn: CheckFunction) -> CheckSpec:
    return fn.spec  # type: ignore[attr-defined,no-any-return]


def sample(values: list[Any], limit: int = 10) -> str:
    """A few offending ids for a message, with the total when there are more."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" (and {len(values) - limit} more)" if len(values) > limit else "")

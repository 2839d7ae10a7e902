"""What every check shares: its context, its result, and the decorator that registers it.

A check is one async function ``check(ctx) -> CheckResult``. The smoke suite, the
``DatabaseSmokeTests`` API and the scripts all run the same functions, so a check's
logic exists exactly once. The decorator times the check, bounds it with a statement
timeout, and maps what went wrong:

* a missing *application* table or column is a failure (a deploy that dropped a table an
  invariant reads must not make the profile's integrity checks skip and the gate pass);
* "could not look" (no privilege, a catalog view the server hides) is a skip with the
  reason, and a skipped check of severity blocker or critical **fails** ("not verified"),
  unless the environment waives it by name with a reason (``smoke.waivers``); the waiver
  then travels with the result into every report. A gate that could not look has not passed.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg

from pytest_hokmdb.config import HokmdbConfig
from pytest_hokmdb.config.model import HotQuery, SmokeSettings
from pytest_hokmdb.config.profile import Profile, project_profile
from pytest_hokmdb.db.target import Target
from pytest_hokmdb.db.topology import Topology
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
    # Set when a waiver in smoke.waivers accepted that this check could not verify.
    waiver: dict[str, str] | None = None
    # False when the check could not look (a "not verified" failure or a waived skip).
    verified: bool = True
    # False when the environment's config says the component the check looks at does not
    # exist (no standby, no PgBouncer): a skip that is a fact, not a failure to look.
    applicable: bool = True

    @classmethod
    def passed(cls, message: str, **kwargs: Any) -> CheckResult:
        return cls("passed", message, **kwargs)

    @classmethod
    def failed(cls, message: str, **kwargs: Any) -> CheckResult:
        return cls("failed", message, **kwargs)

    @classmethod
    def skipped(cls, message: str, **kwargs: Any) -> CheckResult:
        return cls("skipped", message, **kwargs)

    @classmethod
    def not_applicable(cls, message: str, **kwargs: Any) -> CheckResult:
        """Skipped because the config says there is nothing to look at; never fails the gate."""
        return cls("skipped", message, applicable=False, **kwargs)

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
    # The monitoring connection (database.monitor_user, a member of pg_monitor), read-only;
    # None when the environment has none configured.
    monitor: asyncpg.Connection | None = None
    monitor_error: str | None = None  # why a configured monitoring connection is missing
    # The environment's standbys and PgBouncer (``topology`` in its config); empty: none.
    topology: Topology = field(default_factory=Topology)

    @property
    def settings(self) -> SmokeSettings:
        return self.config.smoke

    @property
    def profile(self) -> Profile:
        """The application profile the project chose (``[tool.hokmdb] profile``)."""
        return project_profile(self.project_root)

    @property
    def hot_queries(self) -> list[HotQuery]:
        """``smoke.hot_queries`` when the environment sets them, else the profile's."""
        configured = self.settings.hot_queries
        return list(self.profile.hot_queries) if configured is None else configured

    @property
    def observer(self) -> asyncpg.Connection:
        """The connection for what the application role may not see: the monitoring
        connection when configured, else the application's own (which then may not look)."""
        return self.monitor if self.monitor is not None else self.conn

    def monitor_hint(self) -> str:
        if self.monitor_error:
            return f"{self.monitor_error}; fix it (database.monitor_user / DB_MONITOR_PASSWORD_*)"
        if self.monitor is not None:
            return "grant the monitoring role what README \"Monitoring connection\" lists"
        return ("configure the monitoring connection (database.monitor_user / DB_MONITOR_USER and "
                "DB_MONITOR_PASSWORD_*, a role with pg_monitor; README \"Monitoring connection\")")


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
            sessions = [ctx.conn] + ([ctx.monitor] if ctx.monitor is not None else [])
            try:
                # JIT compiling a check's query can cost a second and more (the planner's
                # estimates for bounded windows are pessimistic); a check is short: no JIT.
                for session in sessions:
                    await session.execute(f"SET statement_timeout = {int(timeout_ms)}; SET jit = off")
                result = await fn(ctx)
            except asyncpg.QueryCanceledError:
                result = CheckResult.failed(
                    f"{title}: did not finish within {timeout_ms} ms (statement timeout); the database is "
                    "overloaded or the check's tables are locked (health.blocked_locks and health.long_transactions "
                    "name who holds them). If it is only slow (a large table, a busy server), raise "
                    f"smoke.check_statement_timeout_ms (now {timeout_ms}) in the {ctx.config.environment} environment's "
                    f"config (database/config/{ctx.config.environment}.json unless --db-config names another)",
                    threshold=timeout_ms,
                )
            except asyncpg.InsufficientPrivilegeError as exc:
                result = CheckResult.skipped(
                    f"{title}: the role may not read what it needs ({exc}); {ctx.monitor_hint()}"
                )
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
                if _catalog_object(exc):
                    # Managed servers hide some catalog views.
                    result = CheckResult.skipped(f"{title}: this server has no {_missing_name(exc)} ({exc})")
                else:
                    result = CheckResult.failed(
                        f"{title}: the application's schema is missing what this check reads: {exc}. A deploy dropped "
                        "or renamed it, or the database is not at the revision the code expects "
                        "(see schema.at_expected_revision and schema.matches_models)"
                    )
            except asyncpg.UndefinedFunctionError as exc:
                # Managed servers hide some functions; an extension may be missing.
                result = CheckResult.skipped(f"{title}: this server lacks a function the check needs ({exc})")
            except HokmdbError as exc:
                result = CheckResult.failed(f"{title}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                # A check that cannot finish has not passed: report it as a failure, not a traceback.
                result = CheckResult.failed(f"{title}: could not run: {type(exc).__name__}: {redact(str(exc))}")
            finally:
                for session in sessions:
                    try:
                        await session.execute("RESET statement_timeout; RESET jit")
                    except (asyncpg.PostgresError, asyncpg.InterfaceError):
                        pass
            result = judge_unverified(spec, result, ctx.settings)
            return replace(result, check=name, duration_s=round(time.monotonic() - started, 4))

        wrapper.spec = spec  # type: ignore[attr-defined]
        return wrapper

    return decorate


GATING_SEVERITIES = frozenset({"blocker", "critical"})
_MISSING = re.compile(r'(?:relation|column) "?([\w.]+)"? does not exist')


def _missing_name(exc: Exception) -> str:
    found = _MISSING.search(str(exc))
    return found.group(1) if found else "such object"


def _catalog_object(exc: Exception) -> bool:
    """Whether the missing table is the server's (a hidden catalog view), not the application's."""
    name = _missing_name(exc).rsplit(".", 1)[-1]
    return isinstance(exc, asyncpg.UndefinedTableError) and (name.startswith("pg_") or "information_schema" in str(exc))


def judge_unverified(spec: CheckSpec, result: CheckResult, settings: SmokeSettings) -> CheckResult:
    """A blocker or critical check that could not look fails, unless waived with a reason.

    A waiver only accepts "could not verify": a check that looked and failed stays failed.
    """
    if result.status != "skipped" or spec.severity not in GATING_SEVERITIES or not result.applicable:
        return result
    waiver = settings.waivers.get(spec.name)
    if waiver is not None and not waiver.expired():
        until = f", until {waiver.expires.isoformat()}" if waiver.expires else ""
        return replace(
            result,
            message=f"waived (smoke.waivers, {spec.severity}{until}): {waiver.reason}. Not verified: {result.message}",
            waiver={"reason": waiver.reason, **({"expires": waiver.expires.isoformat()} if waiver.expires else {})},
            verified=False,
        )
    expired = (f" The waiver in smoke.waivers expired on {waiver.expires.isoformat()}: fix the cause or renew it."
               if waiver is not None and waiver.expires else "")
    return replace(
        result,
        status="failed",
        message=(f"not verified: {result.message}. A {spec.severity} check that cannot look fails the gate: fix what "
                 f"stops it, or accept it for this environment in smoke.waivers with a reason "
                 f'("{spec.name}": {{"reason": "..."}}).{expired}'),
        verified=False,
    )


def spec_of(fn: CheckFunction) -> CheckSpec:
    return fn.spec  # type: ignore[attr-defined,no-any-return]


def sample(values: list[Any], limit: int = 10) -> str:
    """A few offending ids for a message, with the total when there are more."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" (and {len(values) - limit} more)" if len(values) > limit else "")


# Where pg_settings says a session's value came from, when it is not the server's own value:
# ALTER SYSTEM does not change these (the role's, the database's or the client's wins over it).
_OVERRIDES = {
    "user": ("set on role {role} (ALTER ROLE ... SET)", "ALTER ROLE {role} RESET {name}",
             "as a superuser or a role with CREATEROLE"),
    "database": ("set on database {db} (ALTER DATABASE ... SET)", "ALTER DATABASE {db} RESET {name}",
                 "as a superuser or the database's owner"),
    "database user": ("set on role {role} in database {db} (ALTER ROLE ... IN DATABASE ... SET)",
                      "ALTER ROLE {role} IN DATABASE {db} RESET {name}", "as a superuser or a role with CREATEROLE"),
    "client": ("set by the client when it connected (a startup parameter such as PGOPTIONS)",
               "remove {name} from the client's connection options", None),
}


def session_override(name: str, source: str, *, role: str, database: str) -> tuple[str, str, str | None] | None:
    """(where the value came from, the statement that removes it, who may run it) for a
    setting ``pg_settings.source`` says was set on the session's role, its database or by the
    client; None for a server-wide value (configuration file, ALTER SYSTEM, command line,
    default). ``role`` and ``database`` are quoted identifiers."""
    found = _OVERRIDES.get(source)
    if found is None:
        return None
    where, fix, who = found
    return where.format(role=role, db=database), fix.format(role=role, db=database, name=name), who

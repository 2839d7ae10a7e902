"""``hokmdb``: manage the embedded cluster and run the end-to-end demo.

    hokmdb cluster start|stop|status [--environment development]
    hokmdb topology start|stop|status|resume [--environment development]
    hokmdb demo [--environment development] [--players N --games M]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_hokmdb import version_line
from pytest_hokmdb.cli.common import run_cli, setup_logging
from pytest_hokmdb.config import ENVIRONMENTS, LoadedConfig, load_config
from pytest_hokmdb.errors import ConfigError, ExitCode, HokmdbError, Refused

if TYPE_CHECKING:
    from pytest_hokmdb.cluster.topology import LocalTopology

log = logging.getLogger("hokmdb")

EMBEDDED_ENVIRONMENTS = ("development", "testing")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hokmdb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="start, stop or inspect the embedded PostgreSQL cluster")
    cluster.add_argument("action", choices=("start", "stop", "status"))
    cluster.add_argument("--environment", default=os.environ.get("HOKMDB_ENVIRONMENT", "development"), choices=EMBEDDED_ENVIRONMENTS)
    cluster.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")
    cluster.add_argument("--all", action="store_true", dest="all_environments",
                         help="with stop: every environment hokmdb runs (development and testing), topologies included")

    topology = sub.add_parser(
        "topology", help="start, stop or inspect the local topology (topology.local in the environment's config): "
        "true: the embedded cluster as primary, a streaming standby and PgBouncer; \"patroni\": two Patroni-managed "
        "nodes with a one-node etcd, and PgBouncer following the leader")
    topology.add_argument("action", choices=("start", "stop", "status", "resume"),
                          help="resume: RESUME the game's database in PgBouncer after a deploy that paused it was killed "
                               "(any environment with a PgBouncer)")
    topology.add_argument("--environment", default=os.environ.get("HOKMDB_ENVIRONMENT", "development"), choices=ENVIRONMENTS)
    topology.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")

    config = sub.add_parser("config", help="validate environment configs")
    config.add_argument("action", choices=("check",))
    config.add_argument("--environment", default="all", choices=("all", *ENVIRONMENTS))
    config.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")
    config.add_argument(
        "--placeholders",
        action="store_true",
        help="stand in a dummy value for unset required variables: checks structure and types without the secrets (CI)",
    )

    from pytest_hokmdb.notify.cli import add_notify_parser

    add_notify_parser(sub)

    from pytest_hokmdb.cli.runbook import add_runbook_parser

    add_runbook_parser(sub)

    rotate = sub.add_parser(
        "rotate-password", help="give a role a new generated password, set as a SCRAM verifier (the clear password "
        "never reaches the server), proven by a login, and stored where the config reads it")
    rotate.add_argument("--environment", required=True, choices=ENVIRONMENTS)
    rotate.add_argument("--role", required=True, choices=("app", "owner", "monitor"))
    rotate.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")
    rotate.add_argument("--approve", action="store_true", help="production: approve the rotation")
    rotate.add_argument("--show", action="store_true", help="print the new password once (staging/production)")
    rotate.add_argument("--to-file", type=Path, default=None, metavar="PATH",
                        help="write the new password to this file, 0600 (staging/production)")

    demo = sub.add_parser("demo", help="embedded cluster -> migrate to head -> seed -> smoke tests -> summary")
    demo.add_argument("--environment", default="development", choices=EMBEDDED_ENVIRONMENTS)
    demo.add_argument("--config", "--db-config", dest="config_path", default=None, metavar="PATH")
    demo.add_argument("--players", type=int, default=None)
    demo.add_argument("--games", type=int, default=None)
    return parser


def _load_embedded(environment: str, config_path: str | None) -> LoadedConfig:
    loaded = load_config(environment, config_path)
    if not loaded.config.uses_embedded:
        raise ConfigError(
            f"{loaded.path}: {environment} does not use the embedded cluster (DB_HOST is set)",
            hint="unset DB_HOST to use hokmdb's own cluster",
        )
    return loaded


def cmd_cluster(args: argparse.Namespace) -> int:
    from pytest_hokmdb.aio import run_sync
    from pytest_hokmdb.db import embedded_cluster_for, resolve_target
    from pytest_hokmdb.db.resolve import local_patroni_for

    if args.all_environments:
        if args.action != "stop":
            raise ConfigError("--all goes with `hokmdb cluster stop` only")
        for environment in EMBEDDED_ENVIRONMENTS:
            # Stopping the rest must not depend on one environment's config (make clean).
            try:
                said = _stop_local(_load_embedded(environment, args.config_path))
            except HokmdbError as exc:
                said = f"skipped: {exc.message}"
            print(f"{environment}: {said}")
        return 0
    loaded = _load_embedded(args.environment, args.config_path)
    if args.action == "stop":
        print(_stop_local(loaded))
        return 0
    patroni = local_patroni_for(loaded)
    if patroni is not None:
        if args.action == "start":
            raise ConfigError(
                f"{args.environment} runs on its local Patroni topology (topology.local: \"patroni\"), not on the "
                "embedded cluster", hint=f"start it with `hokmdb topology start --environment {args.environment}`")
        print(patroni.status().describe())
        return 0
    cluster = embedded_cluster_for(loaded)
    if args.action == "start":
        # `cluster start` is setup: it creates (or aligns) the application role and database.
        target = run_sync(resolve_target(loaded, provision_embedded=True))
        print(cluster.status().describe())
        print(f"connect: {target.dsn()}  (password: DB_PASSWORD_* or {cluster.state_file})")
    else:
        print(cluster.status().describe())
    return 0


def _stop_local(loaded: LoadedConfig) -> str:
    """Stop every server hokmdb runs for the environment: its local topology's PgBouncer and
    standby (or its Patroni nodes and etcd), then the embedded cluster. Data is kept."""
    from pytest_hokmdb.db import embedded_cluster_for
    from pytest_hokmdb.db.resolve import local_patroni_for

    said: list[str] = []
    local = local_patroni_for(loaded)
    if local is not None:
        said.append(local.stop().describe().replace("\n", "; "))
    cluster = embedded_cluster_for(loaded)
    settings = loaded.config.topology
    if settings is not None and settings.local is True:
        said.append(_light_topology(loaded).stop().describe().replace("\n", "; "))
    elif local is None or cluster.is_running():
        said.append(("stopped" if cluster.stop() else "was not running") + " - " + cluster.status().describe())
    return "; ".join(said)


def _light_topology(loaded: LoadedConfig) -> LocalTopology:
    """``topology.local: true``: the embedded cluster as primary, its standby and PgBouncer."""
    from pytest_hokmdb.db.resolve import local_topology_for

    topology = local_topology_for(loaded)
    assert topology is not None  # callers checked topology.local is true on an embedded environment
    return topology


def cmd_topology(args: argparse.Namespace) -> int:
    from pytest_hokmdb.aio import run_sync
    from pytest_hokmdb.db import resolve_target

    if args.action == "resume":
        return run_sync(_resume_pool(args))
    if args.environment not in EMBEDDED_ENVIRONMENTS:
        raise ConfigError(f"hokmdb runs a local topology only for {' and '.join(EMBEDDED_ENVIRONMENTS)}, not {args.environment}")
    loaded = _load_embedded(args.environment, args.config_path)
    settings = loaded.config.topology
    if settings is None or not settings.local:
        raise ConfigError(
            f"{loaded.path}: {args.environment} has no local topology",
            hint='add "topology": {"local": true} to it, or {"local": "patroni"} for Patroni and etcd '
                 '(README "The production topology")',
        )
    if settings.local == "patroni":
        return _patroni_topology(args, loaded)
    topology = _light_topology(loaded)
    if args.action == "start":
        # Setup, like `cluster start`: roles and database first, so PgBouncer knows them.
        target = run_sync(resolve_target(loaded, provision_embedded=True))
        status = topology.start()
        print(status.describe())
        print(f"the game connects through PgBouncer: postgresql://{target.user}@127.0.0.1:{topology.pooler_port}/{target.dbname}")
        print(f"the deploy connects to the primary: {target.dsn()}")
    elif args.action == "stop":
        print(topology.stop().describe())
    else:
        print(topology.status().describe())
    return 0


def _patroni_topology(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """``topology.local: "patroni"``: etcd, two Patroni nodes and PgBouncer in front of the leader."""
    from pytest_hokmdb.aio import run_sync
    from pytest_hokmdb.db import resolve_target
    from pytest_hokmdb.db.resolve import local_patroni_for

    topology = local_patroni_for(loaded)
    assert topology is not None  # an embedded environment whose topology.local is "patroni"
    if args.action == "start":
        # Setup: the servers, then roles and database on the leader, so PgBouncer knows them.
        target = run_sync(resolve_target(loaded, provision_embedded=True))
        status = topology.start()
        print(status.describe())
        leader = status.leader
        print(f"the game connects through PgBouncer: postgresql://{target.user}@127.0.0.1:{topology.pooler_port}/{target.dbname}")
        print(f"the deploy connects to the leader{f' {leader.name}' if leader else ''}: {target.dsn()} "
              f"(found through Patroni's REST API: {', '.join(topology.rest_urls)})")
    elif args.action == "stop":
        print(topology.stop().describe())
    else:
        status = topology.status()
        print(status.describe())
        if not status.created:
            print(f"  hint: start it with `hokmdb topology start --environment {args.environment}`")
    return 0


async def _resume_pool(args: argparse.Namespace) -> int:
    """RESUME the game's database in PgBouncer and clear the deploy's record of the pause."""
    from pytest_hokmdb.db import connect, resolve_monitor_target, resolve_target
    from pytest_hokmdb.db.resolve import resolve_owner_target, runs_ddl_as_app_role
    from pytest_hokmdb.db.topology import pooler_command, resolve_topology
    from pytest_hokmdb.deploy import maintenance

    loaded = load_config(args.environment, args.config_path)
    target = await resolve_target(loaded, start=False)
    topology = resolve_topology(loaded, target, await resolve_monitor_target(loaded, target))
    if topology.problem:
        raise ConfigError(topology.problem)
    admin = topology.pooler_admin
    if admin is None:
        raise ConfigError(f"{loaded.path}: {args.environment} has no PgBouncer (topology.pgbouncer)")
    try:
        await pooler_command(admin, f"RESUME {admin.database}", timeout_s=10)
        print(f"resumed {admin.database} in {admin.describe()}")
    except HokmdbError as exc:
        if "is not paused" not in exc.message:
            raise
        print(f"{admin.database} was not paused in {admin.describe()}")
    writer = target if runs_ddl_as_app_role(loaded, target) else await resolve_owner_target(loaded, target)
    conn = await connect(writer.writable())
    try:
        if await maintenance.paused_pool(conn):
            await maintenance.record_pause(conn, None)
            print("cleared the deploy's record of the pause (hokmdb_maintenance.paused_pool)")
    finally:
        await conn.close()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    names = ENVIRONMENTS if args.environment == "all" else (args.environment,)
    failures = 0
    for name in names:
        try:
            loaded = load_config(name, args.config_path, stand_in_missing=args.placeholders)
        except ConfigError as exc:
            failures += 1
            print(f"{name}: INVALID\n{exc}", file=sys.stderr)
            continue
        from pytest_hokmdb.checks.catalog import waiver_problems

        problems = waiver_problems(loaded.config.smoke, loaded.project_root)
        if problems:
            failures += 1
            print(f"{name}: INVALID\n{loaded.path}: " + "\n".join(problems), file=sys.stderr)
            continue
        note = f" (placeholders for {', '.join(loaded.stood_in)})" if loaded.stood_in else ""
        waived = "".join(f"\n  waiver: {check}: {w.reason}" + (f" (until {w.expires})" if w.expires else "")
                         for check, w in loaded.config.smoke.waivers.items())
        print(f"{name}: ok, {loaded.path}{note}{waived}")
    return int(ExitCode.CONFIG_ERROR) if failures else int(ExitCode.OK)


@dataclass
class DemoReport:
    steps: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, name: str, started: float, detail: str) -> None:
        self.steps.append((name, time.monotonic() - started, detail))
        log.info("%s: %s (%.2fs)", name, detail, time.monotonic() - started)


def _run_smoke(loaded: LoadedConfig) -> tuple[int, dict[str, int]]:
    """The gate is pytest itself, run as a subprocess and read back through its JSON result."""
    from pytest_hokmdb.gate import run_gate

    result = run_gate(loaded, "smoke")
    if not result.passed:
        failures = [t for t in result.tests if t["outcome"] in ("failed", "error")]
        for test in failures:
            sys.stderr.write(f"  FAILED {test.get('check') or test['nodeid']}: {test['message']}\n")
        if not result.document:
            sys.stderr.write(result.output[-4000:])
    return result.exit_code, result.summary


async def _demo(args: argparse.Namespace) -> int:
    from pytest_hokmdb.config.profile import project_profile
    from pytest_hokmdb.db import connect, resolve_target

    report = DemoReport()
    started_all = time.monotonic()
    t = time.monotonic()
    loaded = _load_embedded(args.environment, args.config_path)
    cfg = loaded.config
    if not cfg.seeding_allowed:
        raise Refused(f"seeding is not allowed on {cfg.environment}")
    seed = project_profile(loaded.project_root).load_seeder()  # before any work: no seeder, no demo
    shown = loaded.path.relative_to(loaded.project_root) if loaded.path.is_relative_to(loaded.project_root) else loaded.path
    report.add("config", t, f"{shown} is valid")  # --config may point outside the project

    t = time.monotonic()
    target = await resolve_target(loaded, provision_embedded=True)
    report.add("cluster", t, f"embedded PostgreSQL ready at {target.dsn()}")

    t = time.monotonic()
    from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy

    # The main job's migrate step is the real deploy path (database/deploy.py --setup: deploy
    # lock, pre-flight, revision by revision under lock_timeout, history, log file). The demo
    # gates with the smoke suite itself below, after seeding.
    outcome = await run_deploy(DeployOptions(cfg.environment, args.config_path, setup=True, gate=False, notify=False))
    if outcome.exit_code != 0:
        sys.stderr.write(f"  migrate: deploy.py failed (exit {outcome.exit_code}): {outcome.message}\n  log: {outcome.log_path}\n")
        return outcome.exit_code
    before, head = outcome.from_revision, outcome.final_revision
    log_name = outcome.log_path.name if outcome.log_path else "-"
    report.add("migrate", t, (f"already at head {head}" if before == head else f"{before or 'empty'} -> {head}") + f" (deploy.py, {log_name})")

    t = time.monotonic()
    from pytest_hokmdb.db.resolve import resolve_owner_target

    conn = await connect(await resolve_owner_target(loaded, target))  # seeding is setup: as the owner
    try:
        seeded = await seed(
            conn,
            players=args.players or cfg.seed.players,
            games=args.games if args.games is not None else cfg.seed.games,
            random_seed=cfg.seed.random_seed,
            clear=False,
        )
    finally:
        await conn.close()
    total_rows = sum(seeded.rows.values())
    report.add("seed", t, f"{total_rows} rows ({seeded.headline()}) at {total_rows / max(seeded.seconds, 1e-9):,.0f} rows/s")

    t = time.monotonic()
    code, counts = _run_smoke(loaded)
    verdict = "passed" if code == 0 else "FAILED"
    report.add("smoke", t, f"{verdict}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))

    print()
    print(f"hokmdb demo on {cfg.environment}: {'OK' if code == 0 else 'FAILED'} in {time.monotonic() - started_all:.1f}s")
    for name, seconds, detail in report.steps:
        print(f"  {name:<8} {seconds:6.2f}s  {detail}")
    print(f"  next: pytest smoke/ --environment {cfg.environment}   |   hokmdb cluster stop --environment {cfg.environment}")
    return int(ExitCode.OK) if code == 0 else int(ExitCode.CHECKS_FAILED)


async def cmd_rotate(args: argparse.Namespace) -> int:
    from pytest_hokmdb.deploy.orchestrator import APPROVAL_ENV
    from pytest_hokmdb.deploy.rotation import rotate_password

    loaded = load_config(args.environment, args.config_path)
    # Approved as a deploy is: --approve, or the CI job's signal naming this environment.
    approved = "--approve" if args.approve else (
        APPROVAL_ENV if os.environ.get(APPROVAL_ENV, "").strip() == args.environment else None)
    result = await rotate_password(loaded, args.role, approved=approved, show=args.show, to_file=args.to_file)
    print(f"rotated the password of role {result.role} on {result.target}: {result.stored}")
    if result.password is not None:
        print(result.password)  # asked for with --show: the one time it is printed
    return int(ExitCode.OK)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # The demo prints its steps and a summary; the deploy's step-by-step lines are in its log file.
    # A runbook prints one table: only warnings reach the console beside it, unless -v.
    quiet = {"demo": ("hokmdb",), "runbook": ()}
    setup_logging(args.verbose, console_loggers=quiet.get(args.command))
    if args.command == "cluster":
        run_cli(lambda: cmd_cluster(args))
    if args.command == "topology":
        run_cli(lambda: cmd_topology(args))
    if args.command == "config":
        run_cli(lambda: cmd_config(args))
    if args.command == "runbook":
        from pytest_hokmdb.cli.runbook import run_runbook

        run_cli(run_runbook(args))
    if args.command == "rotate-password":
        run_cli(cmd_rotate(args))
    if args.command == "notify":
        from pytest_hokmdb.notify.cli import run_notify

        run_cli(lambda: run_notify(args))
    run_cli(_demo(args))


if __name__ == "__main__":
    main()

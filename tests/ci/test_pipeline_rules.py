"""The pipeline's safety rules, each a function that reads the workflow and names what breaks
it. Every rule passes on the real workflow and is proven to fail, naming the job, on a copy
with exactly the mistake it exists to catch: a rollback on any failure, a second production
approval, a rollback a newer run can cancel, missing admin credentials or deploy actor, a
notify job that misses jobs, no pull-request trigger, a paths filter that skips CI's own
files, unpinned images, installs outside the lock."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from helpers import PROJECT_ROOT

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "database.yml"
DEV_LOCK = "requirements/dev.txt"
RUNTIME_LOCK = "requirements/runtime.txt"
# Jobs that deploy, verify, roll back or notify: they install what deploys and nothing more.
RUNTIME_JOBS = ("deploy-staging", "smoke-staging", "rollback-staging", "deploy-production", "smoke-production",
                "emergency-rollback-production", "notify")
# Each environment's own deploy and smoke jobs: the only jobs whose failure may restore it.
ROLLBACKS = {
    "rollback-staging": ("deploy-staging", "smoke-staging"),
    "emergency-rollback-production": ("deploy-production", "smoke-production"),
}
DEPLOYS = ("deploy-staging", "deploy-production")
# Files CI runs or reads: a change to any of them must run the pipeline.
CI_PATHS = ("tests/**", "Makefile", "scripts/**", "tools/allure/**", "requirements/**", ".ci/**",
            "pytest.ini", "pyproject.toml", "pytest_hokmdb/**", "hokm_profile/**", "migrations/**", "database/**", "smoke/**",
            "migration_tests/**", "bench/**", ".github/workflows/database.yml")

Workflow = dict[str, Any]


def _load() -> Workflow:
    return yaml.safe_load(WORKFLOW.read_text())


def _needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _environment(job: dict[str, Any]) -> str | None:
    env = job.get("environment")
    return env.get("name") if isinstance(env, dict) else env


def _runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if "run" in step]


# -- the rules: each returns its findings, one line per job it catches -----------------------------


def rule_rollback_runs_only_for_its_own_environment(wf: Workflow) -> list[str]:
    findings = []
    for name, own in ROLLBACKS.items():
        condition = str(wf["jobs"][name].get("if", ""))
        if re.search(r"(?<![\w.])failure\(\)", condition):
            findings.append(f"{name}: `failure()` is true when any earlier job failed; use needs.<job>.result")
        for job in own:
            if f"needs.{job}." not in condition:
                findings.append(f"{name}: its condition does not look at its own job {job}")
        others = {j for other, jobs in ROLLBACKS.items() if other != name for j in jobs}
        if any(f"needs.{job}." in condition for job in others):
            findings.append(f"{name}: its condition looks at another environment's jobs")
        if "dry_run == 'false'" not in condition:
            findings.append(f"{name}: a dry run must never trigger a restore (check the deploy's dry_run output)")
    return findings


def rule_no_run_can_cancel_a_pending_rollback(wf: Workflow) -> list[str]:
    groups = {name: job["concurrency"]["group"] if isinstance(job.get("concurrency"), dict) else job.get("concurrency")
              for name, job in wf["jobs"].items()}
    findings = []
    for name in ROLLBACKS:
        group = groups.get(name)
        if group is None:
            continue
        shared = sorted(other for other, g in groups.items() if g == group and other != name)
        findings.append(f"{name}: concurrency group {group!r}" + (f" is shared with {', '.join(shared)}" if shared else "")
                        + ": a newer run's job in that group cancels a pending rollback")
    return findings


def rule_one_approval_per_production_deploy(wf: Workflow) -> list[str]:
    waiting = sorted(name for name, job in wf["jobs"].items() if _environment(job) == "production")
    if waiting != ["deploy-production"]:
        return [f"{name}: names the `production` environment and would wait for its own approval"
                for name in waiting if name != "deploy-production"] or ["deploy-production: does not hold the production approval"]
    return []


def rule_rollbacks_have_admin_credentials(wf: Workflow) -> list[str]:
    findings = []
    for name in ROLLBACKS:
        env = wf["jobs"][name].get("env", {})
        for var in ("DB_ADMIN_USER", "DB_ADMIN_PASSWORD"):
            if f"secrets.{var}" not in str(env.get(var, "")):
                findings.append(f"{name}: {var} is not set from the secret; a restore needs the admin role")
    return findings


def rule_deploys_migrate_as_the_owner_role(wf: Workflow) -> list[str]:
    """Staging and production refuse to migrate as the application role (README "The three roles")."""
    findings = []
    for name in DEPLOYS:
        env = wf["jobs"][name].get("env", {})
        suffix = "STAGING" if "DB_HOST_STAGING" in env else "PRODUCTION"
        for var in ("DB_OWNER_USER", f"DB_OWNER_PASSWORD_{suffix}"):
            if f"secrets.{var}" not in str(env.get(var, "")):
                findings.append(f"{name}: {var} is not set from the secret; the deploy would refuse to migrate as the app role")
    return findings


def rule_deploys_and_rollbacks_record_the_actor(wf: Workflow) -> list[str]:
    return [f"{name}: HOKMDB_DEPLOY_ACTOR is not ${{{{ github.actor }}}}; history would record the runner's OS user"
            for name in (*DEPLOYS, *ROLLBACKS)
            if "github.actor" not in str(wf["jobs"][name].get("env", {}).get("HOKMDB_DEPLOY_ACTOR", ""))]


def rule_notify_hears_every_job_and_can_read_its_secret(wf: Workflow) -> list[str]:
    notify = wf["jobs"]["notify"]
    missing = sorted(set(wf["jobs"]) - {"notify"} - set(_needs(notify)))
    findings = [f"notify: does not wait for {', '.join(missing)}, so their result is not reported"] if missing else []
    for name, job in wf["jobs"].items():
        if "secrets." in str(job.get("env", {})) and _environment(job) is None:
            findings.append(f"{name}: reads environment secrets without naming an environment, so it sees none")
    return findings


def rule_pull_requests_are_validated_but_never_deploy(wf: Workflow) -> list[str]:
    on = wf[True]  # PyYAML reads the key `on` as boolean True
    findings = [] if "pull_request" in on else ["workflow: no pull_request trigger: validation and tests run only after a merge"]
    for name, job in wf["jobs"].items():
        condition = str(job.get("if", ""))
        guarded = "github.event_name != 'pull_request'" in condition
        inherits = "always()" not in condition and "!cancelled()" not in condition and any(
            "github.event_name != 'pull_request'" in str(wf["jobs"][n].get("if", "")) for n in _needs(job))
        if _environment(job) is not None and not (guarded or inherits):
            findings.append(f"{name}: uses environment {_environment(job)!r} and would run on a pull request")
    return findings


def rule_paths_filter_covers_what_ci_runs(wf: Workflow) -> list[str]:
    on = wf[True]
    findings = []
    for trigger in ("push", "pull_request"):
        paths = set((on.get(trigger) or {}).get("paths", []))
        missing = [p for p in CI_PATHS if p not in paths]
        if missing:
            findings.append(f"{trigger}: paths filter leaves out {', '.join(missing)}; a change there would skip CI")
    return findings


def rule_images_are_pinned_by_digest(wf: Workflow) -> list[str]:
    findings = []
    for name, job in wf["jobs"].items():
        container = job.get("container")
        images = [container if isinstance(container, str) else (container or {}).get("image")]
        images += [svc.get("image") for svc in (job.get("services") or {}).values()]
        for image in filter(None, images):
            if not re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", image):
                findings.append(f"{name}: image {image} is not pinned by digest (@sha256:...)")
    return findings


def rule_installs_come_from_the_lock(wf: Workflow) -> list[str]:
    """Every install is a lock installed by scripts/install-locked.sh (through make): a bare
    ``pip install`` would resolve. Deploy-side jobs install the runtime lock only: a production
    deploy has no business installing moto, playwright or buildbot to run alembic."""
    findings = []
    for name, job in wf["jobs"].items():
        runs = _runs(job)
        for run in runs:
            for line in run.splitlines():
                if "pip install" in line:
                    findings.append(f"{name}: `{line.strip()}` installs outside the locks (make install / make install-runtime)")
        uses_python = any(re.search(r"\.venv/bin/|python |pytest|hokmdb ", run) for run in runs)
        dev = any(re.search(r"\bmake (install|test)\b(?!-)", run) for run in runs)
        runtime = any(re.search(r"\bmake install-runtime\b", run) for run in runs)
        if name in RUNTIME_JOBS and dev:
            findings.append(f"{name}: installs the development lock {DEV_LOCK}; a job that deploys installs {RUNTIME_LOCK} "
                            "only (make install-runtime)")
        elif uses_python and not (dev or runtime):
            findings.append(f"{name}: runs the project without installing it from a lock")
    return findings


def rule_gates_have_a_monitoring_connection(wf: Workflow) -> list[str]:
    """Every job whose smoke gate judges staging or production can run the checks the
    application role may not (else those blockers are 'not verified' and fail the gate)."""
    findings = []
    for name, job in wf["jobs"].items():
        env = job.get("env", {})
        if not any(k in env for k in ("DB_HOST_STAGING", "DB_HOST_PRODUCTION")):
            continue
        suffix = "STAGING" if "DB_HOST_STAGING" in env else "PRODUCTION"
        for var in ("DB_MONITOR_USER", f"DB_MONITOR_PASSWORD_{suffix}"):
            if f"secrets.{var}" not in str(env.get(var, "")):
                findings.append(f"{name}: {var} is not set from the secret; its gate could not run the monitoring checks")
    return findings


RULES: list[Callable[[Workflow], list[str]]] = [
    rule_gates_have_a_monitoring_connection,
    rule_rollback_runs_only_for_its_own_environment,
    rule_no_run_can_cancel_a_pending_rollback,
    rule_one_approval_per_production_deploy,
    rule_rollbacks_have_admin_credentials,
    rule_deploys_migrate_as_the_owner_role,
    rule_deploys_and_rollbacks_record_the_actor,
    rule_notify_hears_every_job_and_can_read_its_secret,
    rule_pull_requests_are_validated_but_never_deploy,
    rule_paths_filter_covers_what_ci_runs,
    rule_images_are_pinned_by_digest,
    rule_installs_come_from_the_lock,
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__.removeprefix("rule_"))
def test_the_workflow_keeps_the_rule(rule: Callable[[Workflow], list[str]]) -> None:
    assert rule(_load()) == []


# -- each rule, proven to catch the mistake it exists for ---------------------------------------


def _set(path: str, value: Any) -> Callable[[Workflow], None]:
    def mutate(wf: Workflow) -> None:
        *parents, leaf = path.split("/")
        node: Any = wf
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return mutate


_DELETE = object()


def _strip_digest(wf: Workflow) -> None:
    job = wf["jobs"]["test-migrations"]
    job["services"]["postgres"]["image"] = job["services"]["postgres"]["image"].split("@")[0]


def _unlocked_install(wf: Workflow) -> None:
    for step in wf["jobs"]["deploy-staging"]["steps"]:
        if step.get("run") == "make install-runtime":
            step["run"] = "python -m pip install -e ."


def _dev_lock_in_a_deploy_job(wf: Workflow) -> None:
    for step in wf["jobs"]["deploy-production"]["steps"]:
        if step.get("run") == "make install-runtime":
            step["run"] = "make install"


def _drop_pr_trigger(wf: Workflow) -> None:
    del wf[True]["pull_request"]


def _drop_path(wf: Workflow) -> None:
    wf[True]["push"]["paths"].remove("tests/**")


MISTAKES = [
    (rule_rollback_runs_only_for_its_own_environment, _set("jobs/rollback-staging/if", "${{ failure() }}"), "rollback-staging: `failure()`"),
    (rule_rollback_runs_only_for_its_own_environment,
     _set("jobs/emergency-rollback-production/if", "${{ always() && needs.deploy-production.outputs.dry_run == 'false' && "
          "(needs.smoke-staging.result == 'failure' || needs.smoke-production.result == 'failure') }}"),
     "emergency-rollback-production: its condition looks at another environment's jobs"),
    (rule_rollback_runs_only_for_its_own_environment,
     _set("jobs/rollback-staging/if", "${{ always() && (needs.smoke-staging.result == 'failure' || needs.deploy-staging.outputs.exit_code == '11') }}"),
     "rollback-staging: a dry run must never trigger a restore"),
    (rule_no_run_can_cancel_a_pending_rollback,
     _set("jobs/rollback-staging/concurrency", {"group": "deploy-staging", "cancel-in-progress": False}),
     "rollback-staging: concurrency group 'deploy-staging' is shared with deploy-staging"),
    (rule_one_approval_per_production_deploy, _set("jobs/smoke-production/environment", "production"),
     "smoke-production: names the `production` environment"),
    (rule_one_approval_per_production_deploy, _set("jobs/emergency-rollback-production/environment", {"name": "production"}),
     "emergency-rollback-production: names the `production` environment"),
    (rule_deploys_migrate_as_the_owner_role, _set("jobs/deploy-production/env/DB_OWNER_PASSWORD_PRODUCTION", _DELETE),
     "deploy-production: DB_OWNER_PASSWORD_PRODUCTION is not set from the secret"),
    (rule_rollbacks_have_admin_credentials, _set("jobs/rollback-staging/env/DB_ADMIN_PASSWORD", _DELETE),
     "rollback-staging: DB_ADMIN_PASSWORD is not set"),
    (rule_deploys_and_rollbacks_record_the_actor, _set("jobs/deploy-production/env/HOKMDB_DEPLOY_ACTOR", _DELETE),
     "deploy-production: HOKMDB_DEPLOY_ACTOR"),
    (rule_notify_hears_every_job_and_can_read_its_secret,
     _set("jobs/notify/needs", ["validate", "security-scan", "test-migrations", "deploy-staging", "smoke-staging",
                                "deploy-production", "smoke-production"]),
     "notify: does not wait for emergency-rollback-production, rollback-staging"),
    (rule_notify_hears_every_job_and_can_read_its_secret, _set("jobs/notify/environment", _DELETE),
     "notify: reads environment secrets without naming an environment"),
    (rule_pull_requests_are_validated_but_never_deploy, _drop_pr_trigger, "no pull_request trigger"),
    (rule_pull_requests_are_validated_but_never_deploy,
     _set("jobs/deploy-staging/if", "${{ github.ref == 'refs/heads/staging' || github.ref == 'refs/heads/main' }}"),
     "deploy-staging: uses environment 'staging' and would run on a pull request"),
    (rule_paths_filter_covers_what_ci_runs, _drop_path, "push: paths filter leaves out tests/**"),
    (rule_gates_have_a_monitoring_connection, _set("jobs/smoke-production/env/DB_MONITOR_PASSWORD_PRODUCTION", _DELETE),
     "smoke-production: DB_MONITOR_PASSWORD_PRODUCTION is not set"),
    (rule_images_are_pinned_by_digest, _strip_digest, "test-migrations: image postgres:15 is not pinned by digest"),
    (rule_installs_come_from_the_lock, _unlocked_install, "deploy-staging: `python -m pip install -e .` installs outside the locks"),
    (rule_installs_come_from_the_lock, _dev_lock_in_a_deploy_job,
     "deploy-production: installs the development lock requirements/dev.txt; a job that deploys installs "
     "requirements/runtime.txt only (make install-runtime)"),
]


@pytest.mark.parametrize(("rule", "mutate", "expected"), MISTAKES,
                         ids=[f"{r.__name__.removeprefix('rule_')}-{i}" for i, (r, _, _) in enumerate(MISTAKES)])
def test_the_rule_catches_its_mistake(rule: Callable[[Workflow], list[str]], mutate: Callable[[Workflow], None], expected: str) -> None:
    wf = copy.deepcopy(_load())
    mutate(wf)
    findings = rule(wf)
    assert any(expected in finding for finding in findings), findings

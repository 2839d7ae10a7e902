"""Smoke results as Prometheus metrics: a node_exporter textfile and a push to a real local
Pushgateway-compatible HTTP receiver, both parsed with prometheus-client's own parser. A
healthy run reads as passed, a broken database names the failing check, and a metrics
target that fails is said without changing the verdict (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT, LiveTarget
from prometheus_client.parser import text_string_to_metric_families

from pytest_hokmdb.migrate import adowngrade


class _Receiver(BaseHTTPRequestHandler):
    pushes: list[tuple[str, str, str]]

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.pushes.append((self.command, self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pushgateway() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.pushes = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _with_metrics(live_target: LiveTarget, **metrics: object) -> None:
    path = live_target.config_dir / "testing.json"
    data = json.loads(path.read_text())
    data["metrics"] = metrics
    path.write_text(json.dumps(data))


def _smoke(live_target: LiveTarget, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "smoke/", "--environment=testing", f"--db-config={live_target.config_dir}",
         "-p", "no:cacheprovider", "-q", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, env={**os.environ, **live_target.env}, timeout=300, check=False,
    )


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _status(samples: dict, check: str) -> str:  # type: ignore[type-arg]
    on = [dict(labels)["status"] for (name, labels), value in samples.items()
          if name == "hokmdb_smoke_check_status" and dict(labels).get("check") == check and value == 1]
    assert len(on) == 1, (check, on)
    return on[0]


def test_a_healthy_run_is_in_the_textfile_and_at_the_pushgateway(live_target: LiveTarget, tmp_path: Path,
                                                                   pushgateway: ThreadingHTTPServer) -> None:
    textfiles = tmp_path / "textfile"
    _with_metrics(live_target, textfile_dir=str(textfiles), pushgateway_url=f"http://127.0.0.1:{pushgateway.server_port}",
                  job="hokmdb-smoke")
    proc = _smoke(live_target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (textfiles / "hokmdb_smoke_testing.prom").read_text()
    samples = _samples(text)
    env = ("environment", "testing")
    assert samples[("hokmdb_smoke_passed", frozenset({env}))] == 1
    assert samples[("hokmdb_smoke_checks", frozenset({env, ("outcome", "passed")}))] >= 50
    assert _status(samples, "schema.at_expected_revision") == "passed"
    assert samples[("hokmdb_smoke_check_threshold", frozenset({env, ("check", "health.sequences")}))] == 0.8
    assert ("hokmdb_smoke_check_value", frozenset({env, ("check", "connection.latency")})) in samples
    assert live_target.password not in text

    [(method, path, body)] = pushgateway.pushes  # type: ignore[attr-defined]
    assert method == "PUT" and path == "/metrics/job/hokmdb-smoke/environment/testing/source/smoke"
    assert _samples(body)[("hokmdb_smoke_passed", frozenset({env}))] == 1


async def test_a_failing_check_shows_as_failed_and_the_run_as_not_passed(live_target: LiveTarget, tmp_path: Path) -> None:
    _with_metrics(live_target, textfile_dir=str(tmp_path))
    await adowngrade(live_target.db.url, "-1")  # the database is behind the code's head
    proc = _smoke(live_target, "-k", "schema")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    samples = _samples((tmp_path / "hokmdb_smoke_testing.prom").read_text())
    assert samples[("hokmdb_smoke_passed", frozenset({("environment", "testing")}))] == 0
    assert _status(samples, "schema.at_expected_revision") == "failed"


def test_a_pushgateway_that_cannot_be_reached_is_said_and_the_verdict_stands(live_target: LiveTarget, tmp_path: Path) -> None:
    _with_metrics(live_target, textfile_dir=str(tmp_path), pushgateway_url="http://127.0.0.1:1")
    proc = _smoke(live_target, "-k", "connection")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "hokmdb: metrics not exported: metrics.pushgateway_url: the push to http://127.0.0.1:1 failed:" in output
    assert (tmp_path / "hokmdb_smoke_testing.prom").is_file()  # the textfile is still written


def test_a_pushgateway_url_that_is_not_http_is_a_configuration_error(tmp_path: Path) -> None:
    from helpers import write_config_dir

    from pytest_hokmdb.config import load_config
    from pytest_hokmdb.errors import ConfigError

    write_config_dir(tmp_path, "testing", metrics__pushgateway_url="pushgateway:9091")
    with pytest.raises(ConfigError, match=r"metrics.pushgateway_url: must be an http:// or https:// URL"):
        load_config("testing", tmp_path, environ={})


def _exported_metric_names() -> set[str]:
    from pytest_hokmdb.report.metrics import smoke_registry

    document = {"environment": "testing", "exitstatus": 0, "duration_s": 1.0, "summary": {"passed": 1},
                "tests": [{"nodeid": "smoke/test_health.py::test_health[health.sequences]", "check": "health.sequences",
                           "outcome": "passed", "duration_s": 0.01, "measured": 0.1, "threshold": 0.8}]}
    from pytest_hokmdb.report.metrics import backup_registry, deploy_registry, restore_registry

    registries = [smoke_registry(document),
                  deploy_registry("testing", result="succeeded", exit_code=0, duration_s=1.0, revision="0008",
                                  longest_locks={"moves": 0.1}),
                  backup_registry("testing", size_bytes=1, verified=True, revision="0008"),
                  restore_registry("testing", backup_id="b", duration_s=1.0, swapped=False)]
    return {sample.name for registry in registries for family in registry.collect() for sample in family.samples}


def test_the_example_alert_rules_and_dashboard_use_only_what_hokmdb_exports() -> None:
    """docs/monitoring: Prometheus rules and a Grafana dashboard an operator can load as they are."""
    import re

    import yaml

    from pytest_hokmdb.checks.catalog import groups

    exported = _exported_metric_names()
    checks = {fn.spec.name for fns in groups(PROJECT_ROOT).values() for fn in fns}  # type: ignore[attr-defined]
    docs = PROJECT_ROOT / "docs" / "monitoring"
    rules = yaml.safe_load((docs / "hokmdb-alerts.yml").read_text())
    exprs = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["labels"]["severity"] in ("page", "ticket"), rule
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
            exprs.append(rule["expr"])
    dashboard = json.loads((docs / "hokmdb-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        exprs += [target["expr"] for target in panel["targets"]]
    from pytest_hokmdb.deploy.session import RESULTS

    results = set(RESULTS.values())  # what a deploy can report
    for expr in exprs:
        names = set(re.findall(r"\bhokmdb_[a-z_]+\b", expr))
        assert names and names <= exported, (expr, names - exported)
        for alternatives in re.findall(r'result=~"([^"]+)"', expr):  # only results a deploy reports
            assert set(alternatives.split("|")) <= results, alternatives
        for alternatives in re.findall(r'check=~"([^"]+)"', expr):
            assert set(alternatives.split("|")) <= checks, alternatives

"""Installing hokmdb on a machine that never saw it: the locks, installed without resolving.

Every virtualenv here is made by the interpreter's own ``venv``, so its pip is the one the
system's Python ships (``ensurepip``), never the lock's newer pip: that is the pip a new
user has, and the one whose resolver re-resolved a dependency past the lock (issue 30).

* A wheelhouse of four wheels reproduces that failure offline and deterministically:
  ``appa`` needs ``bee[fast]>=1.0``; the lock pins ``bee==1.0``; ``bee 2.0`` was "published
  after the lock was made". The old install command fails on it; ``scripts/install-locked.sh``
  (what ``make install`` runs) installs exactly the lock.
* The real locks: the runtime lock is the development lock's subset with the same pins and
  hashes; installed alone, with the interpreter's pip and nothing else, it runs the main job.
* The seed's three set-up lines work as written.
"""

from __future__ import annotations

import base64
import ensurepip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

INSTALL = PROJECT_ROOT / "scripts" / "install-locked.sh"
RUNTIME_LOCK = PROJECT_ROOT / "requirements" / "runtime.txt"
DEV_LOCK = PROJECT_ROOT / "requirements" / "dev.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _fresh_venv(path: Path) -> Path:
    """A virtualenv made by the base interpreter's ``venv``: pip is the bundled one."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True, capture_output=True, timeout=120)
    version = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert version.startswith(f"pip {ensurepip.version()} "), version  # the interpreter's own pip
    return path


def _wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = (), extras: tuple[str, ...] = ()) -> Path:
    """A minimal, valid pure-Python wheel."""
    info = f"{name}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}"]
    meta += [f"Provides-Extra: {e}" for e in extras] + [f"Requires-Dist: {r}" for r in requires]
    files = {f"{name}/__init__.py": "", f"{info}/METADATA": "\n".join(meta) + "\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text)}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _lock_line(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name}=={version} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}"


@pytest.fixture
def wheelhouse(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """(directory, pip's environment offline on it, lock lines by name); ``bee 2.0`` is newer than the lock."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    lines = {
        "appa": _lock_line(_wheel(house, "appa", "1.0", ("bee[fast]>=1.0",))),
        "bee": _lock_line(_wheel(house, "bee", "1.0", ('cee; extra == "fast"',), ("fast",))),
        "cee": _lock_line(_wheel(house, "cee", "1.0")),
    }
    _wheel(house, "bee", "2.0", ('cee; extra == "fast"',), ("fast",))  # published after the lock was made
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(house), PIP_NO_CACHE_DIR="1")
    return house, env, lines


def _installed(venv: Path) -> dict[str, str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], capture_output=True,
                         text=True, check=True).stdout
    return {p["name"]: p["version"] for p in json.loads(out)}


def test_the_old_install_command_resolves_past_the_lock_on_this_wheelhouse(tmp_path: Path, wheelhouse) -> None:  # type: ignore[no-untyped-def]
    """The fixture reproduces issue 30 with the interpreter's pip: resolution picks ``bee 2.0``
    for ``bee[fast]>=1.0`` although the lock pins 1.0, and hash checking refuses it."""
    _, env, lines = wheelhouse
    lock = tmp_path / "lock.txt"
    lock.write_text("\n".join(lines.values()) + "\n")
    venv = _fresh_venv(tmp_path / "venv")
    old = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--require-hashes", "-r", str(lock)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert old.returncode == 1, old.stdout + old.stderr
    assert "all requirements must have their versions pinned with ==" in old.stderr
    assert re.search(r"bee\[fast\]>=1\.0 from \S*bee-2\.0-py3-none-any\.whl", old.stderr), old.stderr


def test_make_install_takes_exactly_the_lock_where_resolution_would_take_a_newer_release(tmp_path: Path, wheelhouse) -> None:  # type: ignore[no-untyped-def]
    _, env, lines = wheelhouse
    lock = tmp_path / "lock.txt"
    lock.write_text("\n".join(lines.values()) + "\n")
    venv = _fresh_venv(tmp_path / "venv")
    done = subprocess.run(["bash", str(INSTALL), str(venv), str(lock)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + (venv / "install.log").read_text()
    installed = _installed(venv)
    assert {n: installed.get(n) for n in ("appa", "bee", "cee")} == {"appa": "1.0", "bee": "1.0", "cee": "1.0"}
    report = json.loads((venv / "install-report.json").read_text())
    assert sorted((i["metadata"]["name"], i["requested"]) for i in report["install"]) == [
        ("appa", True), ("bee", True), ("cee", True)]


def test_an_install_that_resolved_anything_is_refused_naming_what_pip_chose(tmp_path: Path, wheelhouse) -> None:  # type: ignore[no-untyped-def]
    """The lock has no ``cee``; an install that lets pip resolve fetches it by itself. The
    verification reads pip's report and says so: what a resolving install would have hidden."""
    _, env, lines = wheelhouse
    lock = tmp_path / "lock.txt"
    lock.write_text(f"{lines['appa']}\n{lines['bee']}\n")
    venv = _fresh_venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    resolving = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--report", str(report),
                                "appa==1.0", "bee==1.0"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert resolving.returncode == 0, resolving.stderr
    verify = subprocess.run([str(venv / "bin" / "python"), str(PROJECT_ROOT / "scripts" / "verify-install.py"),
                             "--report", str(report), "--lock", str(lock)], capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"error: pip chose cee 1.0 (not a line of the lock, {lock}): the install resolved past the lock" in verify.stderr
    assert "make lock" in verify.stderr and "Traceback" not in verify.stderr


def test_an_incomplete_lock_fails_the_install_naming_the_missing_requirement(tmp_path: Path, wheelhouse) -> None:  # type: ignore[no-untyped-def]
    """``cee`` is needed only through the extra ``bee[fast]``: ``pip check`` does not follow
    extras and passes; the install's own walk does not."""
    _, env, lines = wheelhouse
    lock = tmp_path / "lock.txt"
    lock.write_text(f"{lines['appa']}\n{lines['bee']}\n")
    venv = _fresh_venv(tmp_path / "venv")
    done = subprocess.run(["bash", str(INSTALL), str(venv), str(lock)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: the lock is incomplete: bee[fast] requires cee, which is not installed" in done.stderr
    assert "Traceback" not in done.stderr
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True,
                           env=env, check=False)
    assert check.returncode == 0, check.stdout  # what pip check alone would have let through


def _pins(lock: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """``{name: (version, hashes)}`` of a pip-compile lock."""
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    name = None
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            name = _canonical(match.group(1))
            pins[name] = (match.group(2), frozenset())
        elif name and "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes | {line.split("--hash=sha256:")[1].split()[0]})
    return pins


def test_the_runtime_lock_is_the_development_locks_subset_with_the_same_pins_and_hashes() -> None:
    runtime, dev = _pins(RUNTIME_LOCK), _pins(DEV_LOCK)
    assert runtime and all(hashes for _, hashes in runtime.values())
    assert {n: runtime[n] for n in runtime if dev.get(n) != runtime[n]} == {}
    # What deploys carries none of the test or CI tools.
    assert not {"moto", "playwright", "buildbot", "optuna", "pip-audit", "pip-tools", "ruff", "bandit", "trustme"} & set(runtime)
    assert {"alembic", "asyncpg", "pytest", "squawk-cli", "pyrage", "boto3", "setuptools"} <= set(runtime)


def _checkout_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked, or new and not ignored): never the developer's .venv or .hokmdb."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = PROJECT_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _clean_env() -> dict[str, str]:
    """The user's environment without this run's virtualenv or hokmdb settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DB_", "HOKMDB_", "VIRTUAL_ENV", "PYTEST_", "BACKUP_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix))
    return env


@pytest.mark.xdist_group("install")
def test_the_runtime_lock_alone_deploys_with_the_interpreters_own_pip(tmp_path: Path, embedded) -> None:  # type: ignore[no-untyped-def]
    """What CI's deploy jobs do: ``make install-runtime`` on a new runner, then deploy. The
    runtime lock is installed with --no-deps, so it must be complete for the deploy, its
    lock-safety lint (squawk) and its smoke gate (a pytest subprocess); and it must carry none
    of the test tools."""
    config_dir, env, cluster = embedded
    project = _checkout_copy(tmp_path / "checkout")
    base = getattr(sys, "_base_executable", sys.executable)
    make_env = {**_clean_env(), "PYTHON": base}
    made = subprocess.run(["make", "install-runtime"], cwd=project, capture_output=True, text=True, env=make_env,
                          timeout=900, check=False)
    log = project / ".venv" / "install.log"
    assert made.returncode == 0, made.stdout + made.stderr + (log.read_text() if log.exists() else "")
    installed = _installed(project / ".venv")
    assert not {"moto", "playwright", "buildbot", "optuna", "pip-audit", "trustme"} & {_canonical(n) for n in installed}
    assert installed["pip"] == ensurepip.version()  # the runtime lock does not upgrade pip
    python = project / ".venv" / "bin" / "python"
    deployed = subprocess.run([str(python), "database/deploy.py", "--environment", "development", "--config",
                               str(config_dir), "--setup"], cwd=project, capture_output=True, text=True,
                              env={**env, "PATH": make_env["PATH"]}, timeout=600, check=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "0008" in deployed.stdout + deployed.stderr
    version = subprocess.run([str(project / ".venv" / "bin" / "hokmdb"), "--version"], capture_output=True, text=True,
                             check=False)
    assert version.returncode == 0 and version.stdout.startswith("hokmdb "), version.stdout + version.stderr


@pytest.mark.xdist_group("install")
def test_the_seeds_three_setup_lines_work_as_written(tmp_path: Path) -> None:
    """``pip install -r requirements.txt``, ``pip install -r requirements-postgresql.txt``,
    ``cp .env.database.example .env.database``, with the interpreter's pip in a fresh
    virtualenv: pip installs only lock lines (its report says so), and the result runs
    ``hokmdb`` and validates the development config with the copied (empty) env file."""
    project = _checkout_copy(tmp_path / "checkout")
    venv = _fresh_venv(tmp_path / "venv")
    env = {**_clean_env(), "PATH": f"{venv / 'bin'}{os.pathsep}{_clean_env()['PATH']}"}
    pins = {n: v for n, (v, _) in _pins(RUNTIME_LOCK).items()}
    for number, requirements in enumerate(("requirements.txt", "requirements-postgresql.txt")):
        report = tmp_path / f"report-{number}.json"
        step = subprocess.run(["pip", "install", "--report", str(report), "-r", requirements], cwd=project,
                              capture_output=True, text=True, env=env, timeout=900, check=False)
        assert step.returncode == 0, step.stdout + step.stderr
        for item in json.loads(report.read_text())["install"]:
            name, version = _canonical(item["metadata"]["name"]), item["metadata"]["version"]
            assert item["requested"], f"{requirements}: pip resolved {name} {version} by itself"
            if name != "pytest-hokmdb":
                assert pins.get(name) == version, f"{requirements}: {name} {version} is not the lock's"
    shutil.copy(project / ".env.database.example", project / ".env.database")
    check = subprocess.run(["hokmdb", "config", "check", "--environment", "development"], cwd=project,
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == f"development: ok, {project / 'database' / 'config' / 'development.json'}\n"
    broken = subprocess.run(["pip", "check"], cwd=project, capture_output=True, text=True, env=env, check=False)
    assert broken.returncode == 0, broken.stdout

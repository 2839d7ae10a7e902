#!/usr/bin/env python3
"""Prove that an install took exactly the lock, and that the lock is complete.

    <venv>/bin/python scripts/verify-install.py --report REPORT.json --lock LOCK [--project DIR[EXTRAS]]

``make install`` installs the lock with ``pip install --no-deps``: pip never asks the index
what else exists, so nothing outside the lock can be chosen, whatever is published tomorrow
(requirements/README.md says why). Two things must then be proven instead of assumed:

* pip installed nothing but lock lines, at the locked versions (pip's ``--report``): a
  dependency pip picked itself would be an install that resolved past the lock;
* the lock is complete: every requirement of every locked distribution (and of the project,
  with the extras it is installed for), markers evaluated and extras followed, is met by what
  is installed. ``pip check`` alone does not follow extras (``a`` needing ``b[x]`` whose
  ``x`` needs ``c``), so this walks them itself.

Run by the virtualenv's own interpreter (it reads that environment's metadata), with
``packaging`` from the lock (both carry it) or else pip's own copy. Exit 0: proven; 1: not, with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a lock without packaging: the copy every pip carries
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_lock(path: Path, seen: set[Path] | None = None) -> dict[str, str]:
    """``{name: version}`` of a pip-compile lock, following ``-r`` includes."""
    seen = seen if seen is not None else set()
    path = path.resolve()
    if path in seen:
        return {}
    seen.add(path)
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith(("-r ", "--requirement ")):
            pins.update(read_lock(path.parent / line.split(None, 1)[1], seen))
            continue
        match = _PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def report_problems(report: dict, pins: dict[str, str], lock: Path) -> list[str]:
    """Everything pip installed that is not a lock line at its locked version."""
    problems = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, version = canonicalize_name(meta.get("name", "?")), meta.get("version", "?")
        if item.get("is_direct") and (item.get("download_info", {}).get("dir_info") is not None):
            continue  # the project itself, installed from its directory
        if pins.get(name) != version:
            why = "not a line of the lock" if name not in pins else f"the lock pins {pins[name]}"
            problems.append(f"pip chose {name} {version} ({why}, {lock}): the install resolved past the lock")
    return problems


def _installed(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def missing_requirements(roots: list[tuple[str, frozenset[str]]]) -> list[str]:
    """Requirements of the roots and of everything they need, with extras, that nothing installed meets."""
    base_env = default_environment()
    problems: list[str] = []
    done: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(n), extra) for n, extras in roots for extra in ("", *sorted(extras))]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in done:
            continue
        done.add((name, extra))
        dist = _installed(name)
        if dist is None:
            continue  # reported by whoever required it
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**base_env, "extra": extra}):
                continue
            if req.marker is None and extra:
                continue  # an unconditional requirement was checked with the distribution itself
            target = canonicalize_name(req.name)
            found = _installed(target)
            who = f"{dist.metadata['Name']}[{extra}]" if extra else dist.metadata["Name"]
            wanted = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "") + str(req.specifier)
            if found is None:
                problems.append(f"the lock is incomplete: {who} requires {wanted}, which is not installed")
                continue
            if req.specifier and not req.specifier.contains(found.version, prereleases=True):
                problems.append(f"the lock is inconsistent: {who} requires {wanted}, the lock has {found.version}")
            todo.extend((target, e) for e in ("", *sorted(req.extras)))
    return sorted(set(problems))


def _project_root(spec: str) -> tuple[str, frozenset[str]]:
    """``DIR`` or ``DIR[extra,...]`` -> the project's distribution name and extras."""
    match = re.fullmatch(r"(.+?)(?:\[([^\]]*)\])?", spec)
    assert match is not None
    directory, extras = Path(match.group(1)), match.group(2) or ""
    name = tomllib.loads((directory / "pyproject.toml").read_text())["project"]["name"]
    return name, frozenset(e.strip() for e in extras.split(",") if e.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="pip install --report JSON")
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--project", default=None, help="DIR or DIR[extra,...]: the project, installed --no-deps")
    args = parser.parse_args(argv)
    pins = read_lock(args.lock)
    problems = report_problems(json.loads(args.report.read_text()), pins, args.lock)
    roots = [(name, frozenset()) for name in pins]
    if args.project:
        roots.append(_project_root(args.project))
    problems += missing_requirements(roots)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"  hint: regenerate the locks with `make lock` (then commit requirements/), or fix {args.lock}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Running a project's env.py as it is: what the suite neutralises around it."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import Any


@contextlib.contextmanager
def no_file_config() -> Iterator[None]:
    """env.py's ``fileConfig(config.config_file_name)`` (guarded or not) does nothing: it
    would replace pytest's log handlers (and disable every existing logger) once per command,
    and an unguarded call with the file name the suite hides raises ``TypeError``."""
    import logging.config

    original = logging.config.fileConfig
    logging.config.fileConfig = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        logging.config.fileConfig = original


@functools.lru_cache(maxsize=16)
def _compiled(path: str, mtime_ns: int, size: int) -> CodeType:
    return compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)


def run_env_py(script: Any) -> None:
    """What ``ScriptDirectory.run_env()`` does (execute env.py as a new module), with env.py
    compiled once per process rather than once per command: the suite runs it three times
    per revision, and without a writable ``__pycache__`` (or with PYTHONDONTWRITEBYTECODE)
    every run compiled it again. An env.py edited meanwhile (new mtime or size) is compiled
    again; a sourceless env.pyc is left to alembic."""
    path = Path(script.env_py_location)
    try:
        stat = path.stat()
    except FileNotFoundError:
        script.run_env()
        return
    code = _compiled(str(path), stat.st_mtime_ns, stat.st_size)
    spec = importlib.util.spec_from_file_location("env_py", path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(code, module.__dict__)  # noqa: S102 - the project's own env.py, as alembic runs it

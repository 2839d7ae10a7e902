"""Running a project's env.py as it is: what the suite neutralises around it."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator


@functools.cache
def installed_postgresql_driver() -> str:
    """The SQLAlchemy driver name of the first PostgreSQL driver installed: psycopg, psycopg2,
    else asyncpg (hokmdb's own). A bare ``postgresql://`` means psycopg under SQLAlchemy 2.1
    (psycopg2 before), which a project may not have."""
    for module, name in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return name
    return "postgresql+asyncpg"


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

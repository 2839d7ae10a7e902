"""Running a project's env.py as it is: what the suite neutralises around it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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

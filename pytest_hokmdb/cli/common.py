"""What every hokmdb command line shares: exit codes, redacted logging, no tracebacks.

Expected failures (``HokmdbError``) become one ``error:`` line plus a hint and the
documented exit code; anything else is a bug and keeps its traceback (redacted).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from pytest_hokmdb.console import interactive
from pytest_hokmdb.errors import ExitCode, HokmdbError
from pytest_hokmdb.redaction import RedactingFilter, redact


def setup_logging(verbose: bool = False, *, console_loggers: tuple[str, ...] | None = None) -> None:
    """Console logging. ``console_loggers``: a command that prints its own summary (the demo)
    shows only these loggers' INFO lines and everyone's warnings, unless ``-v``."""
    level = logging.DEBUG if verbose else logging.INFO
    if interactive():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    if console_loggers is not None and not verbose:
        shown = console_loggers
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or record.name in shown)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "alembic", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)


def fail(message: str, hint: str | None = None, code: int = ExitCode.CHECKS_FAILED) -> NoReturn:
    print(f"error: {redact(message)}", file=sys.stderr)
    if hint:
        print(f"  hint: {redact(hint)}", file=sys.stderr)
    raise SystemExit(int(code))


def run_cli(main: Callable[[], Any] | Awaitable[Any]) -> NoReturn:
    """Run a command's main (sync, async, or a coroutine) and exit with its code."""
    try:
        result = main() if callable(main) else main
        if inspect.isawaitable(result):
            result = asyncio.run(result)  # type: ignore[arg-type]
    except HokmdbError as exc:
        fail(exc.message, exc.hint, exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None
    except SystemExit:
        raise
    except BaseException:
        # A bug, not an operator error: keep the traceback, but never a secret in it.
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        raise SystemExit(int(ExitCode.CHECKS_FAILED)) from None
    raise SystemExit(int(result or 0))

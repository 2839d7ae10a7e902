"""SQLAlchemy 2.0 async engines bound to a ``Target`` (same read-only guard as asyncpg)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pytest_hokmdb.db.target import Target


def create_engine(target: Target, *, pooled: bool = False) -> AsyncEngine:
    """An engine whose connections carry the target's timeouts and read-only setting.

    ``hide_parameters`` keeps bound values (which may be secrets) out of SQLAlchemy errors.
    """
    kwargs: dict[str, object] = {"connect_args": target.sqlalchemy_connect_args(), "hide_parameters": True}
    if not pooled:
        kwargs["poolclass"] = NullPool
    return create_async_engine(target.sqlalchemy_url(), **kwargs)

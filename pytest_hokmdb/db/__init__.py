"""Connections: targets, asyncpg connections and pools, SQLAlchemy engines."""

from pytest_hokmdb.db.connect import connect, create_pool
from pytest_hokmdb.db.engine import create_engine
from pytest_hokmdb.db.resolve import embedded_cluster_for, provision, resolve_monitor_target, resolve_target
from pytest_hokmdb.db.target import Target

__all__ = ["Target", "connect", "create_engine", "create_pool", "embedded_cluster_for", "provision", "resolve_monitor_target", "resolve_target"]

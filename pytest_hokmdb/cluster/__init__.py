"""PostgreSQL clusters hokmdb runs itself (the embedded default and the tests' throwaways)."""

from pytest_hokmdb.cluster.embedded import ClusterStatus, EmbeddedCluster

__all__ = ["ClusterStatus", "EmbeddedCluster"]

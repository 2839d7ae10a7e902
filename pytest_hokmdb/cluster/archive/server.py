"""How a PostgreSQL server gets the secrets its ``archive_command`` needs.

``archive-push`` runs inside the server (as a child of its archiver process), so with an
encrypted or S3 repository it needs the cipher pass and the S3 keys too. hokmdb puts
them in the server's *environment* (``PGBACKREST_REPO1_CIPHER_PASS`` etc.), which the
server passes on to ``archive_command``, rather than in a config file only the server
account can read:

* nothing secret is ever written to disk, so it cannot end up in a file-system backup,
  a disk image or a copied work directory;
* who can read it is the same as for a 0600 file of the server account (that account and
  root, through ``/proc/<pid>/environ``), so nothing is given up for it.

The price: the secrets must be in the environment of whoever *starts* the server.
``pg_ctl start`` passes its caller's environment on, so hokmdb's own clusters get them
from ``archiving_cluster`` below, and restored copies from ``recovery``. A server that
hokmdb does not run needs them in its service definition (e.g. systemd
``EnvironmentFile=`` with mode 0600). A server restarted without them keeps running but
cannot archive (``archive-push command requires option: repo1-cipher-pass``):
``PgBackRest.check`` then fails with that reason and WAL stays in ``pg_wal`` until fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_hokmdb.cluster.archive.conf import archive_settings, secret_environment
from pytest_hokmdb.cluster.archive.settings import PitrSetup
from pytest_hokmdb.cluster.embedded import EmbeddedCluster
from pytest_hokmdb.cluster.osuser import OsUser


@dataclass(frozen=True)
class ServerAccount(OsUser):
    """The server's OS account plus environment variables every server command inherits."""

    extra_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def env(self) -> dict[str, str]:
        return {**super().env(), **dict(self.extra_env)}


def server_environment(setup: PitrSetup) -> dict[str, str]:
    """Environment variables the server needs so its ``archive_command`` can reach the repository."""
    return secret_environment(setup)


def archiving_cluster(cluster: EmbeddedCluster, setup: PitrSetup) -> EmbeddedCluster:
    """Make an embedded cluster archive into ``setup``'s stanza; returns the same cluster.

    Adds the archiving settings to those it writes on start and gives the commands it runs
    (``pg_ctl start`` among them) the secrets in their environment. Call before ``start()``;
    a running cluster must be restarted for ``archive_mode`` to change.
    """
    cluster.settings.update(archive_settings(setup))
    base = cluster.user
    extra = tuple(sorted(server_environment(setup).items()))
    cluster.user = ServerAccount(base.name, base.uid, base.gid, base.home, base.switches, extra_env=extra)
    return cluster

"""How a PostgreSQL server hokmdb runs archives its WAL into a pgBackRest stanza: the
resolved setup, the generated pgBackRest configuration and the server's archive settings.

It lives with the process manager (the foundation) because starting a cluster needs it;
``pytest_hokmdb.pitr`` (backups, restore points, recovery) builds on it."""

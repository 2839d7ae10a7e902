"""The migration verification suite's machinery (``pytest migration_tests/``): history
rules, catalog snapshots, round-trips, model drift, data fixtures and lock-safety lint.
Nothing here is tied to the Hokm schema; ``settings`` says which alembic project to verify."""

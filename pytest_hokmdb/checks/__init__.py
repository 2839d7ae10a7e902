"""Checks of a live database, one module per group (connection, schema, security,
performance, pool, health); the application profile adds its own (Hokm: the integrity
invariants). ``catalog.groups`` lists them in order.

Nothing is imported here, so one group's import cannot break another's.
"""

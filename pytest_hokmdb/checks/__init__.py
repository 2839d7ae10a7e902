"""Checks of a live database, one module per group (connection, schema, security,
performance, pool, health, integrity); ``catalog.GROUPS`` lists them in order.

Nothing is imported here, so one group's import cannot break another's.
"""

"""The advisory-lock keys hokmdb itself takes, in one place below both their users.

The deploy takes them (``deploy.lock``); the smoke suite's ``health.advisory_locks`` must
recognise them so a deploy in progress is not reported as a stuck job's lock.
"""

from __future__ import annotations

NAMESPACE = 0x686B6462  # "hkdb": first key of the two-key advisory lock form
DEPLOY_KEY = 1
MIGRATION_KEY = 2

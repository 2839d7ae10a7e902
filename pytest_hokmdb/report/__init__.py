"""Machine-readable results: the ``--hokmdb-json`` file deploy.py and CI read back."""

"""Command-line front doors: shared plumbing (``common``) and the ``hokmdb`` command (``main``)."""

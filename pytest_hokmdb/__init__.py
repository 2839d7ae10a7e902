"""hokmdb: deploy and verify the Hokm game server's PostgreSQL database with pytest."""

__version__ = "0.1.0"

"""fazt: a personal platform-as-a-service in one executable and one SQLite database."""

__version__ = "0.1.0"

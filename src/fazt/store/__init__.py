"""SQLite storage: the bottom of fazt. Nothing here imports from the layers above."""

from fazt.store.database import Database, open_database

__all__ = ["Database", "open_database"]

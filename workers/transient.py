"""The errors worth a Celery retry, shared by the app factory and the task modules it registers.

Apart from `workers.errors` on purpose: that module imports nothing, so the CLI can catch its errors
without loading SQLAlchemy.
"""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from db.errors import DatabaseUnavailableError

__all__ = ["TRANSIENT_ERRORS"]

# Worth retrying: the database is unreachable or (SQLite) locked longer than the busy timeout.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (DatabaseUnavailableError, OperationalError)

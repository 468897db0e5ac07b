"""Alembic migrations of the defect loop database (run through `db.migrate`)."""
